"""report.md as the Prefect UI shows it: images inlined as ``data:`` URIs.

A Prefect markdown artifact is rendered by the UI in the browser, far from the report folder:
a relative image link (``report_images/x.png``) resolves against the UI's own address and
shows as alt text.  The artifact therefore carries its pictures itself, downscaled JPEG
(detections) or PNG (charts) small enough that a report of a few pictures stays well under a
megabyte.  The report.md file on disk keeps its relative links.
"""
from __future__ import annotations

import base64
import re
from pathlib import Path

import cv2

IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
#: widest picture sent to the UI (the artifact pane is about this wide on a laptop)
MAX_WIDTH = 1100
JPEG_QUALITY = 80


def data_uri(path: Path, max_width: int = MAX_WIDTH) -> str | None:
    """``data:image/...;base64,...`` of ``path`` at most ``max_width`` wide; None if the
    file is missing or unreadable (the link is then left as it was)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    if w > max_width:
        img = cv2.resize(img, (max_width, max(1, round(h * max_width / w))),
                         interpolation=cv2.INTER_AREA)
    chart = path.suffix.lower() == ".png" and "_vs_" not in path.name  # flat colours: PNG
    ok, buf = (cv2.imencode(".png", img) if chart else
               cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]))
    if not ok:
        return None
    mime = "image/png" if chart else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.tobytes()).decode('ascii')}"


def inline_images(markdown: str, base: str | Path) -> str:
    """``markdown`` with every relative image link under ``base`` replaced by its data URI."""
    root = Path(base)

    def sub(m: re.Match[str]) -> str:
        alt, target = m.group(1), m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("/") \
                or ".." in Path(target).parts:
            return m.group(0)
        uri = data_uri(root / target)
        return f"![{alt}]({uri})" if uri else m.group(0)
    return IMAGE_LINK.sub(sub, markdown)

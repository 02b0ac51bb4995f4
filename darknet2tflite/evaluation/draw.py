"""Render detections onto images and write them atomically.

Drawn images are human-facing evidence (CLI previews, reports), so they reuse Darknet's
class colour scheme, making them easy to compare side by side with ``darknet detector
test`` output, and they are written atomically so a crashed or concurrent run never
leaves a half-written file behind under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from darknet2tflite.evaluation.decode import Detections

__all__ = ["captioned", "class_color", "draw_detections", "save_image"]

_DARKNET_COLORS = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=np.float64)


def _get_color(c: int, x: int, max_: int) -> float:
    # image.c get_color: interpolate along Darknet's 6-colour ramp.
    ratio = (x / max_) * 5 if max_ else 0.0
    i, j = int(np.floor(ratio)), int(np.ceil(ratio))
    ratio -= i
    return float((1 - ratio) * _DARKNET_COLORS[i][c] + ratio * _DARKNET_COLORS[j][c])


def class_color(class_id: int, num_classes: int) -> tuple[int, int, int]:
    """Darknet's per-class RGB colour (draw_detections_v3), as 0..255 ints."""
    n = max(int(num_classes), 1)
    offset = (int(class_id) * 123457) % n
    rgb = (_get_color(2, offset, n), _get_color(1, offset, n), _get_color(0, offset, n))
    return tuple(int(round(255 * v)) for v in rgb)  # type: ignore[return-value]


def draw_detections(rgb_uint8: np.ndarray, dets: Detections, names: list[str] | None) -> np.ndarray:
    """Return a copy of ``rgb_uint8`` with boxes and "name 0.87" labels drawn on it.

    Labels never overlap each other (staggered, see :func:`_place_label`) and are drawn
    over all boxes; the most confident ones get the spot right above their box.
    """
    if rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3:
        raise ValueError(f"draw_detections expects HxWx3 RGB, got shape {rgb_uint8.shape}")
    img = np.ascontiguousarray(rgb_uint8, dtype=np.uint8).copy()
    h, w = img.shape[:2]
    n_classes = len(names) if names else (int(dets.classes.max()) + 1 if len(dets) else 1)
    thickness = max(1, int(round(min(h, w) * 0.004)))
    # legible when the picture is shown at half size (side by side, in a browser)
    font_scale = max(0.45, max(h, w) / 900.0)
    text_thick = 2 if font_scale >= 1.0 else 1
    font = cv2.FONT_HERSHEY_SIMPLEX
    placed: list[tuple[int, int, int, int]] = []  # label boxes so far (most confident first)
    order = np.argsort(dets.scores, kind="stable")
    spots = {int(k): _place_label(dets, int(k), names, w, h, thickness, font, font_scale, placed)
             for k in order[::-1]}
    for k in order:  # boxes first, then every label on top of every box
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.boxes[k])
        x1, x2 = sorted((min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)))
        y1, y2 = sorted((min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)))
        color = class_color(int(dets.classes[k]), n_classes)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thickness, lineType=cv2.LINE_AA)
    for k in order:
        cls = int(dets.classes[k])
        color = class_color(cls, n_classes)
        name = names[cls] if names and 0 <= cls < len(names) else str(cls)
        label = f"{name} {float(dets.scores[k]):.2f}"
        (tw, th), base = cv2.getTextSize(label, font, font_scale, 1)
        tx, ty = spots[int(k)]
        cv2.rectangle(img, (tx, ty), (tx + tw + 2, ty + th + base + 2), color, -1)
        text_color = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
        cv2.putText(img, label, (tx + 1, ty + th + 1), font, font_scale, text_color, text_thick,
                    cv2.LINE_AA)
    return img


def captioned(rgb: np.ndarray, caption: str) -> np.ndarray:
    """``rgb`` under a white strip naming it (which half of a side-by-side is which)."""
    h, w = rgb.shape[:2]
    scale = max(0.6, w / 700.0)  # by width: the same size once the pair is scaled to a pane
    (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    strip = np.full((th + base + 16, w, 3), 255, np.uint8)
    cv2.putText(strip, caption, (max((w - tw) // 2, 0), th + 8), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (0, 0, 0), 2, cv2.LINE_AA)
    return np.concatenate([strip, np.ascontiguousarray(rgb, dtype=np.uint8)], axis=0)


def _place_label(dets: Detections, k: int, names: list[str] | None, w: int, h: int,
                 thickness: int, font: int, font_scale: float,
                 placed: list[tuple[int, int, int, int]]) -> tuple[int, int]:
    """Top-left corner of detection ``k``'s label: above its box if free, else inside its
    top edge, else staggered down by label heights until it overlaps no label placed so far
    (``placed``, filled most confident first, so their labels keep the best spots)."""
    x1, y1, _, y2 = (int(round(float(v))) for v in dets.boxes[k])
    x1, y1, y2 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)
    cls = int(dets.classes[k])
    name = names[cls] if names and 0 <= cls < len(names) else str(cls)
    (tw, th), base = cv2.getTextSize(f"{name} {float(dets.scores[k]):.2f}", font, font_scale, 1)
    lh = th + base + 2
    tx = min(x1, max(w - tw - 2, 0))
    candidates = [y1 - lh, y1 + thickness] + [y1 + thickness + i * lh for i in range(1, 12)]

    def free(ty: int) -> bool:
        return not any(tx < bx2 and bx1 < tx + tw + 2 and ty < by2 and by1 < ty + lh
                       for bx1, by1, bx2, by2 in placed)
    ty = next((t for t in candidates if 0 <= t <= h - lh and free(t)),
              max(min(y1 - lh if y1 - lh >= 0 else y1 + thickness, h - lh), 0))
    placed.append((tx, ty, tx + tw + 2, ty + lh))
    return tx, ty


def save_image(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Encode by extension and replace ``path`` atomically (temp file + fsync + os.replace)."""
    out = Path(path)
    ext = out.suffix.lower() or ".png"
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    elif rgb.ndim == 2:
        bgr = np.ascontiguousarray(rgb, dtype=np.uint8)
    else:
        raise ValueError(f"save_image expects HxWx3 RGB or HxW gray, got shape {rgb.shape}")
    try:
        ok, buf = cv2.imencode(ext, bgr)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"{out}: OpenCV cannot encode images as {ext!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out


"""Report charts drawn with OpenCV (already a dependency; no plotting library needed).

The per-layer int8 error is a ranking: which Darknet layers lose most to quantization.  A
horizontal bar per layer, labelled with the Darknet layer index and section type (what a
Darknet user knows, not TFLite's long tensor names), with the pure-rounding reference line,
reads at a glance in a browser, a Prefect UI artifact or a PR comment.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
BAR = (70, 130, 180)        # RGB steel blue
BAR_BAD = (200, 70, 60)     # RGB: bars above the warning level
INK = (30, 30, 30)
GRID = (215, 215, 215)


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float = 0.5,
          color: tuple[int, int, int] = INK, thick: int = 1) -> None:
    cv2.putText(img, s, org, FONT, scale, color, thick, cv2.LINE_AA)


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str,
              unit: str = "", reference: float | None = None, reference_label: str = "",
              warn_above: float | None = None, width: int = 760) -> np.ndarray:
    """RGB image of one horizontal bar per (label, value), in the given order."""
    n = len(values)
    row, top, bottom = 26, 56, 44
    label_w = max([cv2.getTextSize(s, FONT, 0.5, 1)[0][0] for s in labels] + [40]) + 16
    h = top + row * max(n, 1) + bottom
    img = np.full((h, width, 3), 255, np.uint8)
    _text(img, title, (12, 24), 0.6, thick=1)
    x0, x1 = label_w, width - 70
    vmax = max([float(v) for v in values] + [reference or 0.0, 1e-9]) * 1.08
    scale = (x1 - x0) / vmax
    # grid and ticks
    step = _nice_step(vmax / 5)
    t = 0.0
    while t <= vmax:
        x = int(x0 + t * scale)
        cv2.line(img, (x, top - 6), (x, top + row * n), GRID, 1)
        _text(img, f"{t:g}", (x - 8, top + row * n + 18), 0.42)
        t += step
    if unit:
        _text(img, unit, (x0, h - 8), 0.45)
    for i, (s, v) in enumerate(zip(labels, values)):
        y = top + i * row
        color = BAR_BAD if warn_above is not None and v > warn_above else BAR
        cv2.rectangle(img, (x0, y + 4), (int(x0 + float(v) * scale), y + row - 4), color, -1)
        tw = cv2.getTextSize(s, FONT, 0.5, 1)[0][0]
        _text(img, s, (x0 - 8 - tw, y + row - 8))
        _text(img, f"{float(v):.2f}", (int(x0 + float(v) * scale) + 5, y + row - 8), 0.45)
    if reference is not None:
        x = int(x0 + reference * scale)
        for yy in range(top - 6, top + row * n, 8):  # dashed
            cv2.line(img, (x, yy), (x, min(yy + 4, top + row * n)), (90, 90, 90), 1)
        if reference_label:
            _text(img, reference_label, (min(x + 4, width - 160), top - 10), 0.42)
    return img


def _nice_step(x: float) -> float:
    """1, 2 or 5 times a power of ten, >= x."""
    p = 10 ** np.floor(np.log10(max(x, 1e-12)))
    for m in (1, 2, 5, 10):
        if m * p >= x:
            return float(m * p)
    return float(10 * p)


def layer_error_chart(worst: Sequence[dict], layer_types: dict[int, str] | None = None,
                      limit: int = 12) -> np.ndarray | None:
    """The QuantizationDebugger ranking (``report["worst_layers"]``) as a bar chart."""
    rows = [r for r in worst if r.get("rmse_over_scale") is not None][:limit]
    if not rows:
        return None
    types = layer_types or {}

    def label(r: dict) -> str:
        layer = r.get("layer")
        if isinstance(layer, int):
            kind = types.get(layer) or types.get(str(layer))  # type: ignore[call-overload]
            return f"layer {layer} {kind or ''}".strip() + f" ({r.get('op', '').lower()})"
        return f"{r.get('op', '?').lower()} (no Darknet layer)"
    return bar_chart([label(r) for r in rows], [float(r["rmse_over_scale"]) for r in rows],
                     title="int8 error per layer (QuantizationDebugger, worst first)",
                     unit="RMSE / int8 step", reference=0.29,
                     reference_label="0.29 = rounding only", warn_above=1.0)

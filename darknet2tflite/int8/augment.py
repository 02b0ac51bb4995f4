"""Calibration augmentation: small calibration sets also calibrate on mirrored photos.

Why: the int8 activation ranges (quantize.refine_ranges) are MSE-optimal clipping ranges,
set by the tails of each tensor's value histogram, and a few dozen photos sample those tails
poorly: ranges fitted to 43 photos clip what other photos need. A left-right mirrored photo
is as natural as the original (Darknet trains with ``flip=1``), and its activations are not
the mirror of the original's (the filters are not symmetric), so it samples new values.
Measured on yolov4-tiny held out (bench/int8_splits.py, docs/int8.md "Mirrored calibration
photos"): with 43 calibration photos the mirrored copies lower the AP50 loss on every one of
six halvings; with 57 or 64 photos they did not help (57: AP50 loss 0.34 higher with them,
eight partitions), nor on the 86 shared photos. So only sets below ``MIRROR_BELOW`` photos
get them; larger sets also keep their conversion time.

numpy is imported lazily: the CLI and flows import the default cheaply.
"""
from __future__ import annotations

from typing import Any

#: calibration sets of fewer photos than this get a mirrored copy of every photo
MIRROR_BELOW = 50


def mirrored_count(n: int, below: int = MIRROR_BELOW) -> int:
    """How many mirrored copies :func:`mirror_augment` adds to ``n`` images."""
    return n if 0 < n < below else 0


def mirror_augment(images: Any, below: int = MIRROR_BELOW) -> Any:
    """``images`` (N x H x W x C) followed by a left-right mirrored copy of each when N is
    below ``below`` (0 = never); otherwise ``images`` itself (originals first, unchanged)."""
    if mirrored_count(len(images), below) == 0:
        return images
    import numpy as np
    x = np.asarray(images, dtype=np.float32)
    return np.concatenate([x, x[:, :, ::-1, :]])

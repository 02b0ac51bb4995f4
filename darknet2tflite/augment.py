"""Calibration augmentation: small calibration sets are completed with mirrored photos.

Why: the int8 activation ranges (quantize.refine_ranges) are MSE-optimal clipping ranges,
set by the tails of each tensor's value histogram, and a few dozen photos sample those tails
poorly: ranges fitted to 43 photos clip what other photos need. A left-right mirrored photo
is as natural as the original (Darknet trains with ``flip=1``), and its activations are not
the mirror of the original's (the filters are not symmetric), so it samples new values.
Measured on yolov4-tiny (bench/int8_splits.py, docs/int8.md): mirroring lowers the
cross-calibrated AP and AP50 loss. Sets at or above the target get nothing added, which
keeps the conversion time of large sets unchanged.

numpy is imported lazily: the CLI and flows import the default cheaply.
"""
from __future__ import annotations

from typing import Any

#: calibration sets smaller than this are completed with mirrored copies, up to this size
MIRROR_TARGET = 256


def mirrored_count(n: int, target: int = MIRROR_TARGET) -> int:
    """How many mirrored copies :func:`mirror_augment` adds to ``n`` images."""
    return max(0, min(n, target - n))


def mirror_augment(images: Any, target: int = MIRROR_TARGET) -> Any:
    """``images`` (N x H x W x C) followed by left-right mirrored copies of the first ones,
    at most ``target`` images in all (the originals always stay, first and unchanged)."""
    k = mirrored_count(len(images), target)
    if k == 0:
        return images
    import numpy as np
    head = np.asarray(images[:k], dtype=np.float32)
    return np.concatenate([np.asarray(images, dtype=np.float32), head[:, :, ::-1, :]])

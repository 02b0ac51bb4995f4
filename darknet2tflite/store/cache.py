"""Where this package keeps per-user caches (calibration arrays, file digests).

``$DARKNET2TFLITE_CACHE`` if set, else ``$XDG_CACHE_HOME/darknet2tflite`` (default
``~/.cache/darknet2tflite``): outside the output folder on purpose, so a failed run leaves
nothing in ``--out``, and shared by every run of the user, so caches pay off across runs.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("DARKNET2TFLITE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "darknet2tflite"

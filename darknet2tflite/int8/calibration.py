"""Calibration data for full-integer quantization: image folder -> preprocessed .npy.

The int8 model can only be as good as the activation ranges it is calibrated with, and
those ranges are only right if the calibration images reach the network exactly as they
will at inference, i.e. through Darknet's own preprocessing for this cfg (stretch resize,
or letterbox when ``[net] letter_box=1``), done by :mod:`darknet2tflite.images`.

Problems with the folder (missing, no images, every file unreadable) are user errors
raised here, before any TensorFlow conversion starts -- otherwise they surface much later
as the converter's cryptic "Empty min/max for tensor".

Loading and resizing a few hundred photos with the bit-exact Darknet resampler takes a
while, so the result is cached as a float32 .npy keyed by the image files (name, size,
mtime) and the preprocessing; reruns, and the later stages that need the same array
(range refinement, QuantizationDebugger), read it memory-mapped.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from darknet2tflite.store.atomic import atomic_write_bytes
from darknet2tflite.store.cache import cache_root
from darknet2tflite.darknet.config import DarknetConfig
from darknet2tflite.darknet.cfg import parse_cfg
from darknet2tflite.errors import InputError, reason, shown, shown_path
from darknet2tflite.images import (IMAGE_EXTENSIONS, NETWORK_CHANNELS, ImageError, check_network_channels,
                     find_images, image_walk, load_network_image, preprocess)

__all__ = [
    "CalibrationWarning", "DEFAULT_LIMIT", "calibrate", "calibration_images", "cache_dir",
    "holdout_split", "representative_dataset", "load_calibration",
]

Progress = Callable[[str], None]
DEFAULT_LIMIT = 500
#: bump when preprocessing changes so stale caches are never reused
CACHE_VERSION = 1
#: how many skipped names the one warning shows (the count covers all of them)
SHOWN_SKIPPED = 5


class CalibrationWarning(UserWarning):
    """Some calibration images were skipped (unreadable); the run continues without them."""


@dataclass(frozen=True)
class CalibrationSet:
    """What went into a calibration array (recorded next to it and in the report)."""

    npy: Path
    images: list[str]
    skipped: list[tuple[str, str]]
    cached: bool

    def __fspath__(self) -> str:
        """Usable wherever a path is expected (``calibrate(...)`` "returns the .npy")."""
        return str(self.npy)

    def to_dict(self) -> dict:
        return {"npy": str(self.npy), "images": len(self.images),
                "image_names": self.images,
                "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
                "cached": self.cached}


def cache_dir() -> Path:
    """Where calibration arrays are cached (under :func:`cache.cache_root`)."""
    return cache_root() / "calibration"


def _as_cfg(cfg: DarknetConfig | str | os.PathLike[str]) -> DarknetConfig:
    return cfg if isinstance(cfg, DarknetConfig) else parse_cfg(cfg)


def _split_key(path: Path, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{path.name}".encode()).hexdigest()


def holdout_split(paths: Sequence[Path], eval_fraction: float = 0.5, seed: int = 0
                  ) -> tuple[list[Path], list[Path]]:
    """Deterministically split ``paths`` into (calibration, evaluation).

    When one folder serves for both, evaluating the int8 model on its own calibration
    images would flatter it; images are ranked by a seeded hash of their file name (so
    the split does not depend on listing order or on files added later changing the
    others' side) and the first ``eval_fraction`` of them are held out for evaluation."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    ranked = sorted(paths, key=lambda p: (_split_key(Path(p), seed), str(p)))
    n_eval = int(round(len(ranked) * eval_fraction))
    if len(ranked) >= 2:
        n_eval = min(max(n_eval, 1), len(ranked) - 1)
    ev = set(map(str, ranked[:n_eval]))
    calib = [Path(p) for p in paths if str(p) not in ev]
    evals = [Path(p) for p in paths if str(p) in ev]
    return calib, evals


def calibration_images(folder: str | os.PathLike[str], limit: int | None = DEFAULT_LIMIT,
                       exclude: Iterable[str | os.PathLike[str]] = (), seed: int = 0,
                       skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Image files under ``folder`` (recursive jpg/jpeg/png/bmp), minus ``exclude``, in a
    seeded shuffled order, at most ``limit``. Shuffling before the limit keeps a limited
    subset representative of the whole folder rather than of its first sub-folder.
    ``skipped`` (when given) receives the names the walk passed over (FIFOs, dangling
    links, directory symlinks) with the reason."""
    root = Path(folder)
    if not root.exists():
        raise InputError(f"calibration folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"calibration folder {root} is not a folder")
    if limit is not None and limit < 1:
        raise InputError(f"calibration limit must be >= 1, got {limit}")
    skip = {os.path.realpath(p) for p in exclude}
    walk = image_walk(root)
    if skipped is not None:
        skipped.extend((str(p), f"{shown_path(p)}: {why}") for p, why in walk.skipped)
    paths = [p for p in find_images(root, limit=None, seed=seed)
             if os.path.realpath(p) not in skip]
    if not paths:
        exts = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        more = f" (after holding out {len(skip)} evaluation image(s))" if skip else ""
        raise InputError(f"no calibration images ({exts}) found under {root}{more}")
    return paths if limit is None else paths[:limit]


def _cache_key(cfg: DarknetConfig, paths: Sequence[Path]) -> str:
    files = []
    for p in paths:
        try:
            st = p.stat()
            files.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([str(p), None, None])
    doc = {"version": CACHE_VERSION, "width": cfg.width, "height": cfg.height,
           "channels": cfg.channels, "letter_box": bool(cfg.letter_box), "resize": "darknet",
           "files": files}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    from darknet2tflite.store.atomic import atomic_write
    atomic_write(path, lambda f: np.save(f, arr))


def _prune_cache(folder: Path, keep: int = 6) -> None:
    """Keep the cache bounded: a 500-image 416x416 array is ~1 GB."""
    arrays = sorted(folder.glob("calib-*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in arrays[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


def calibrate(cfg: DarknetConfig | str | os.PathLike[str], calibration_dir: str | os.PathLike[str],
              out_npy: str | os.PathLike[str] | None = None, limit: int | None = DEFAULT_LIMIT,
              *, exclude: Iterable[str | os.PathLike[str]] = (), seed: int = 0,
              progress: Progress | None = print, progress_every: int = 25) -> CalibrationSet:
    """Preprocess the calibration images of ``calibration_dir`` into a float32 NHWC .npy.

    ``out_npy`` None caches under :func:`cache_dir`; an existing array whose sidecar .json
    records the same key (same files, sizes, mtimes, cfg input) is reused as is.
    Unreadable files are skipped with ONE :class:`CalibrationWarning` naming them; no
    usable image at all raises :class:`InputError`."""
    cfg = _as_cfg(cfg)
    say = progress or (lambda _m: None)
    check_network_channels(cfg.channels, f"{cfg.path}: ")
    walk_skipped: list[tuple[str, str]] = []
    paths = calibration_images(calibration_dir, limit, exclude, seed, walk_skipped)
    key = _cache_key(cfg, paths)
    if out_npy is None:
        folder = cache_dir()
        out = folder / f"calib-{key[:24]}.npy"
    else:
        out = Path(out_npy)
    side = out.with_suffix(".json")
    if out.is_file() and side.is_file():
        try:
            info = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            info = {}
        if info.get("key") == key:
            arr = np.load(out, mmap_mode="r")
            if arr.shape[1:] == (cfg.height, cfg.width, cfg.channels) and arr.shape[0] == len(info["images"]):
                say(f"calibration: reusing cached {arr.shape[0]} preprocessed images ({out})")
                if info.get("skipped"):
                    _warn_skipped([(s["file"], s["reason"]) for s in info["skipped"]], say)
                os.utime(out)
                return CalibrationSet(out, info["images"],
                                      [(s["file"], s["reason"]) for s in info["skipped"]], True)
    mode = "letterbox" if cfg.letter_box else "stretch"
    say(f"calibration: preprocessing {len(paths)} images from {calibration_dir} "
        f"({cfg.width}x{cfg.height}, Darknet {mode} resize)")
    arr = np.empty((len(paths), cfg.height, cfg.width, cfg.channels), np.float32)
    used: list[str] = []
    skipped: list[tuple[str, str]] = list(walk_skipped)
    t_read = time.perf_counter()
    for i, p in enumerate(paths, 1):
        try:
            pixels = load_network_image(p, cfg.channels)
        except ImageError as e:
            skipped.append((str(p), str(e)))
        else:
            arr[len(used)] = preprocess(pixels, cfg.width, cfg.height, cfg.letter_box)
            used.append(str(p))
        if i % max(progress_every, 1) == 0 or i == len(paths):
            say(f"calibration: {i}/{len(paths)} images read"
                + (f", {len(skipped)} skipped" if skipped else "")
                + f" ({i / max(time.perf_counter() - t_read, 1e-9):.1f} images/s)")
    if not used:
        first = "; ".join(f"{shown(Path(f).name, 40)}: {reason(r, f)}"
                          for f, r in skipped[:3])
        raise InputError(f"none of the {len(paths)} image file(s) under "
                         f"{shown_path(calibration_dir)} could be read as an image ({first}"
                         f"{' ...' if len(skipped) > 3 else ''})")
    if skipped:
        _warn_skipped(skipped, say)
    arr = arr[:len(used)]
    _atomic_save_npy(out, arr)
    atomic_write_bytes(side, (json.dumps({
        "key": key, "cfg": cfg.path.name, "input": [cfg.height, cfg.width, cfg.channels],
        "letter_box": bool(cfg.letter_box), "images": used,
        "skipped": [{"file": f, "reason": r} for f, r in skipped]}, indent=1) + "\n").encode())
    if out_npy is None:
        _prune_cache(out.parent)
    return CalibrationSet(out, used, skipped, False)


def _warn_skipped(skipped: list[tuple[str, str]], say: Progress) -> None:
    names = ", ".join(shown(Path(f).name, 40) for f, _ in skipped[:SHOWN_SKIPPED])
    more = f" and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
    msg = f"calibration: skipped {len(skipped)} unusable image file(s): {names}{more}"
    say(msg)
    warnings.warn(msg, CalibrationWarning, stacklevel=3)


def load_calibration(npy: str | os.PathLike[str]) -> np.ndarray:
    """The cached array, memory-mapped (read-only): a 500-image set need not fit twice."""
    arr = np.load(npy, mmap_mode="r")
    if arr.ndim != 4 or arr.shape[0] == 0 or arr.shape[-1] not in NETWORK_CHANNELS:
        raise InputError(f"{npy}: not a calibration array (expected N x H x W x 3 or 1, N >= 1, "
                         f"got shape {arr.shape})")
    return arr


def representative_dataset(arr: np.ndarray, limit: int | None = None
                           ) -> Callable[[], Iterator[list[np.ndarray]]]:
    """TFLiteConverter.representative_dataset over ``arr``, one image per step (the models
    are batch 1)."""
    n = len(arr) if limit is None else min(limit, len(arr))

    def gen() -> Iterator[list[np.ndarray]]:
        for i in range(n):
            yield [np.ascontiguousarray(arr[i:i + 1], dtype=np.float32)]
    return gen

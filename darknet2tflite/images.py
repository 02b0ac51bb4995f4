"""Image discovery, loading and Darknet-style network input preparation.

Every model this project writes takes NHWC input with value = pixel / 255, RGB for
``channels=3`` and grey for ``channels=1`` cfgs (see docs/ARCHITECTURE.md), so this module
is the single place that turns files on disk into that tensor. Darknet-exactness matters
here: calibration data and evaluation must see the same pixels Darknet would feed the
network, otherwise float-vs-int8 comparisons and mAP numbers drift for reasons that have
nothing to do with the conversion.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

# a backstop for formats whose header imagefile.py does not parse (set before cv2 loads)
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "50000000")
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from darknet2tflite.errors import InputError, shown_path  # noqa: E402
from darknet2tflite.imagefile import check_image_bytes, read_image_bytes  # noqa: E402
from darknet2tflite.walk import Walk, regular_files  # noqa: E402

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageError",
    "LetterboxParams",
    "find_images",
    "letterbox_params",
    "load_batch",
    "load_network_image",
    "load_rgb",
    "preprocess",
    "resize_darknet",
]

IMAGE_EXTENSIONS: set[str] = {".jpg", ".jpeg", ".png", ".bmp"}

#: input channel counts Darknet's image loader feeds (``[net] channels``).
NETWORK_CHANNELS = (1, 3)

ResizeMethod = Literal["darknet", "opencv"]


class ImageError(ValueError):
    """An image file that cannot be turned into RGB pixels (message names the file)."""


def find_images(folder: str | os.PathLike[str], limit: int | None = 500, seed: int = 0) -> list[Path]:
    """Pick a reproducible, unbiased subset of the images under ``folder``.

    Sorting before the seeded shuffle makes the result independent of file-system listing
    order, so the same folder and seed give the same calibration/evaluation set on every
    machine; shuffling (rather than taking the first N sorted names) avoids biasing a
    limited subset towards one sub-folder or naming scheme.
    """
    root = Path(folder)
    if limit is not None and limit < 0:
        raise ValueError(f"find_images: limit must be >= 0 or None, got {limit}")
    if root.is_file():
        return [root] if root.suffix.lower() in IMAGE_EXTENSIONS else []
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    found = image_walk(root).files
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    random.Random(seed).shuffle(found)
    return found if limit is None else found[:limit]


def image_walk(folder: str | os.PathLike[str]) -> Walk:
    """Image files (by extension) under ``folder`` and what was skipped on the way (FIFOs,
    dangling links, directory symlinks: see walk.py for the policy)."""
    return regular_files(folder, IMAGE_EXTENSIONS)


def _to_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    """Map any decoded sample type to uint8 by value range, never by wrap-around."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        # 65535 / 257 == 255 exactly: round-to-nearest linear rescale of the full range.
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.dtype == np.int8:
        return (img.astype(np.int16) + 128).astype(np.uint8)
    if img.dtype == np.int16:
        return ((img.astype(np.int32) + 32768 + 128) // 257).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        finite = np.nan_to_num(img.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(np.rint(finite * 255.0), 0, 255).astype(np.uint8)
    raise ImageError(f"{path}: unsupported pixel type {img.dtype}")


def load_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB, accepting every common storage variant.

    ``IMREAD_ANYDEPTH | IMREAD_ANYCOLOR`` is used instead of ``IMREAD_UNCHANGED`` on
    purpose: like Darknet's own ``cv::imread(..., IMREAD_COLOR)`` it applies the EXIF
    orientation (COCO-style annotations refer to the displayed image) and drops the alpha
    channel without compositing, yet it keeps 16-bit samples so they can be rescaled by
    value instead of being truncated. Palette images arrive already expanded by libpng.
    """
    p = Path(path)
    img = _read(p, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    channels = img.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if channels == 2:  # gray + alpha (only reachable with exotic decoders)
        return np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2))
    raise ImageError(f"{p}: unsupported channel count {channels}")


def _read(p: Path, flags: int) -> np.ndarray:
    try:
        data = read_image_bytes(p)
        check_image_bytes(data, p)
    except InputError as exc:
        raise ImageError(str(exc)) from None
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:  # some decoders raise instead of returning None
        raise ImageError(f"{shown_path(p)}: cannot decode image "
                         f"({str(exc).strip().splitlines()[-1]})") from exc
    if img is None or img.size == 0:
        raise ImageError(f"{shown_path(p)}: not a readable image (corrupt or unsupported format)")
    return _to_uint8(img, p)


def load_gray(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to uint8 HxWx1 grey the way Darknet does for ``channels=1``.

    Darknet's ``load_image_mat`` reads such networks' images with ``IMREAD_GRAYSCALE``,
    which for JPEG takes the decoder's own luma (not a conversion of the decoded RGB), so
    the same flag is used here; ``IMREAD_ANYDEPTH`` keeps 16-bit samples for rescaling.
    """
    p = Path(path)
    img = _read(p, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if img.ndim == 3:  # decoders that ignore the grey request
        img = img[:, :, 0]
    return np.ascontiguousarray(img[:, :, None])


def check_network_channels(channels: int, where: str = "") -> None:
    """Refuse input channel counts no image file maps to, before any image is read (a cfg
    problem, not a bad file: :class:`InputError`, never skipped like an unreadable image)."""
    if int(channels) not in NETWORK_CHANNELS:
        raise InputError(f"{where}[net] channels={channels}: images can only be fed to networks "
                         "with channels=3 (RGB) or channels=1 (grey)")


def load_network_image(path: str | os.PathLike[str], channels: int = 3) -> np.ndarray:
    """The uint8 HxWxC pixels a ``[net] channels=C`` network sees: RGB or Darknet grey."""
    check_network_channels(channels)
    return load_rgb(path) if int(channels) == 3 else load_gray(path)


class LetterboxParams(NamedTuple):
    """Geometry of Darknet's letterbox: resized content size and its integer offset."""

    new_w: int
    new_h: int
    pad_x: int
    pad_y: int


def letterbox_params(orig_w: int, orig_h: int, net_w: int, net_h: int) -> LetterboxParams:
    """Darknet's letterbox geometry (image.c letterbox_image / correct_yolo_boxes).

    Integer arithmetic is kept exactly as in C (``new_h = (h * netw) / w`` truncates,
    offsets are ``(netw - new_w) / 2`` in int) so preprocessing and box correction agree
    with Darknet to the pixel.
    """
    if min(orig_w, orig_h, net_w, net_h) <= 0:
        raise ValueError(f"letterbox_params: sizes must be positive, got {orig_w}x{orig_h} -> {net_w}x{net_h}")
    if net_w / orig_w < net_h / orig_h:
        new_w = net_w
        new_h = (orig_h * net_w) // orig_w
    else:
        new_h = net_h
        new_w = (orig_w * net_h) // orig_h
    new_w = max(new_w, 1)
    new_h = max(new_h, 1)
    return LetterboxParams(new_w, new_h, (net_w - new_w) // 2, (net_h - new_h) // 2)


def _darknet_axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights of Darknet's 1-D resample, in float32 like the C code."""
    if dst == 1 or src == 1:
        scale = np.float32(0.0) if dst == 1 else np.float32(src - 1) / np.float32(dst - 1)
    else:
        scale = np.float32(src - 1) / np.float32(dst - 1)
    s = np.arange(dst, dtype=np.float32) * scale
    idx = s.astype(np.int64)  # C (int) cast truncates towards zero; s >= 0
    frac = (s - idx.astype(np.float32)).astype(np.float32)
    idx = np.minimum(idx, src - 1)
    return idx, frac


def resize_darknet(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bit-faithful vectorized port of Darknet's ``resize_image`` on a float HxWxC image.

    Darknet samples with align-corners spacing ``(src-1)/(dst-1)``, takes the last source
    column verbatim, and for the last output row only adds the ``(1-dy)`` term; those
    quirks are reproduced because they are what Darknet-trained weights were evaluated on.
    """
    img = np.asarray(img, dtype=np.float32)
    src_h, src_w = img.shape[:2]
    if src_w == width and src_h == height:
        return img.copy()
    # Horizontal pass: im (src_h, src_w) -> part (src_h, width).
    ix, dx = _darknet_axis(src_w, width)
    ix1 = np.minimum(ix + 1, src_w - 1)
    dxb = dx[None, :, None]
    part = (1.0 - dxb) * img[:, ix, :] + dxb * img[:, ix1, :]
    if src_w == 1:
        part = np.repeat(img[:, -1:, :], width, axis=1)
    else:
        part[:, -1, :] = img[:, -1, :]
    part = part.astype(np.float32)
    # Vertical pass: part (src_h, width) -> resized (height, width).
    iy, dy = _darknet_axis(src_h, height)
    iy1 = np.minimum(iy + 1, src_h - 1)
    dyb = dy[:, None, None]
    out = (1.0 - dyb) * part[iy, :, :]
    second = dyb * part[iy1, :, :]
    if src_h != 1:
        second[-1] = 0.0  # Darknet skips the dy term on the last row
        out = out + second
    return out.astype(np.float32)


def _resize(img01: np.ndarray, width: int, height: int, method: ResizeMethod) -> np.ndarray:
    if method == "darknet":
        return resize_darknet(img01, width, height)
    if method == "opencv":
        return cv2.resize(img01, (width, height), interpolation=cv2.INTER_LINEAR)
    raise ValueError(f"unknown resize method {method!r} (expected 'darknet' or 'opencv')")


#: float32(byte / 255.0 computed in double), for every byte value
_UNIT_LUT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


def preprocess(
    rgb_uint8: np.ndarray,
    width: int,
    height: int,
    letter_box: bool,
    method: ResizeMethod = "darknet",
) -> np.ndarray:
    """Prepare one image exactly as Darknet feeds its network: float32 (H, W, C) in [0, 1].

    ``rgb_uint8`` is HxWx3 RGB or HxWx1 grey (``load_network_image``); C follows it.

    Stretch mode is Darknet's ``resize_image`` and letterbox mode is ``letterbox_image``
    (aspect kept, centred, borders filled with 0.5). Resizing happens after the /255 on
    floats, as in Darknet, so no 8-bit rounding sneaks in. ``method="opencv"`` swaps the
    resampler for ``cv2.resize(INTER_LINEAR)`` (half-pixel centres), which is what
    ``cv2.dnn.blobFromImage`` does; it exists only to match OpenCV-DNN pipelines, the
    default reproduces Darknet itself. The two differ by at most a few grey levels.
    """
    if rgb_uint8.ndim != 3 or rgb_uint8.shape[2] not in NETWORK_CHANNELS:
        raise ValueError(f"preprocess expects HxWx3 RGB or HxWx1 grey, got shape {rgb_uint8.shape}")
    # Darknet computes (float)(byte / 255.) in double, then stores a float.
    # through a 256-entry table: the same float32 values without a float64 copy of the image
    img01 = _UNIT_LUT[rgb_uint8] if rgb_uint8.dtype == np.uint8 else \
        (rgb_uint8.astype(np.float64) / 255.0).astype(np.float32)
    if not letter_box:
        out = _resize(img01, width, height, method)
    else:
        h, w = rgb_uint8.shape[:2]
        lb = letterbox_params(w, h, width, height)
        resized = _resize(img01, lb.new_w, lb.new_h, method)
        out = np.full((height, width, rgb_uint8.shape[2]), 0.5, dtype=np.float32)
        out[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = resized
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def load_batch(
    paths: Sequence[str | os.PathLike[str]],
    width: int,
    height: int,
    letter_box: bool,
    method: ResizeMethod = "darknet",
    channels: int = 3,
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Load and preprocess many images, skipping (not failing on) unusable files.

    Real image folders contain the odd corrupt or truncated file; one bad file must not
    abort a calibration or evaluation run, but it must be reported, hence the skip list.
    """
    check_network_channels(channels)
    arrays: list[np.ndarray] = []
    skipped: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        try:
            pixels = load_network_image(path, channels)
        except ImageError as exc:
            skipped.append((path, str(exc)))
            continue
        arrays.append(preprocess(pixels, width, height, letter_box, method))
    if arrays:
        batch = np.stack(arrays).astype(np.float32, copy=False)
    else:
        batch = np.zeros((0, height, width, channels), dtype=np.float32)
    return batch, skipped

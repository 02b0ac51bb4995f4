"""Darknet .weights reader.

The file carries no layer boundaries, so the only way to catch a weights file trained for a
different cfg is to count: we know from the cfg exactly how many floats each conv owns and
report the layer where the file ran out, or how many bytes were left over.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG

import numpy as np

from darknet2tflite.bounds import check_weight_values
from darknet2tflite.darknet.config import DarknetConfig, conv_float_counts
from darknet2tflite.errors import WeightsError


@dataclass
class ConvWeights:
    """One conv layer's parameters as stored by Darknet (weights in OIHW order)."""

    biases: np.ndarray
    weights: np.ndarray
    scales: np.ndarray | None = None
    rolling_mean: np.ndarray | None = None
    rolling_variance: np.ndarray | None = None


@dataclass
class DarknetWeights:
    path: Path
    major: int
    minor: int
    revision: int
    seen: int
    layers: dict[int, ConvWeights] = field(default_factory=dict)


def expected_size(cfg: DarknetConfig, major: int = 0, minor: int = 2) -> int:
    header = 12 + (8 if _seen_is_64bit(major, minor) else 4)
    return header + 4 * sum(k for s in cfg.layers if s.kind == "convolutional"
                            for _, k in conv_float_counts(s))


def _seen_is_64bit(major: int, minor: int) -> bool:
    return (major * 10 + minor) >= 2 and major < 1000 and minor < 1000


def read_weights(path: str | Path, cfg: DarknetConfig) -> DarknetWeights:
    path = Path(path)
    try:
        if not S_ISREG(path.stat().st_mode):  # a FIFO would block the read forever
            raise WeightsError("not a regular file", file=path)
        data = path.read_bytes() if path.stat().st_size <= expected_size(cfg) + 64 else None
    except OSError as e:
        raise WeightsError(f"cannot read weights: {e.strerror}", file=path) from None
    if data is None:  # refuse before loading an absurdly large file into memory
        size, want = path.stat().st_size, expected_size(cfg)
        raise WeightsError(f"file has {size} bytes but {cfg.path.name} needs about {want}: "
                           f"{size - want} bytes left over (weights for a different cfg?)",
                           file=path)
    if len(data) < 16:
        raise WeightsError(f"file has only {len(data)} bytes, too short for a Darknet header "
                           "(16-20 bytes)", file=path)
    major, minor, revision = (int(x) for x in np.frombuffer(data, "<i4", 3, 0))
    if not (0 <= major < 1000 and 0 <= minor < 1000 and revision >= 0):
        raise WeightsError(f"header version {major}.{minor}.{revision} is not a Darknet weights "
                           "header", file=path)
    if _seen_is_64bit(major, minor):
        if len(data) < 20:
            raise WeightsError("file ends inside the header", file=path)
        seen, off = int(np.frombuffer(data, "<u8", 1, 12)[0]), 20
    else:
        seen, off = int(np.frombuffer(data, "<u4", 1, 12)[0]), 16

    out = DarknetWeights(path, major, minor, revision, seen)
    for sec in cfg.layers:
        if sec.kind != "convolutional":
            continue
        arrays: dict[str, np.ndarray] = {}
        for name, count in conv_float_counts(sec):
            need = 4 * count
            if off + need > len(data):
                raise WeightsError(
                    f"file ended while reading {name} of conv layer {sec.index} "
                    f"(cfg line {sec.line}): needed {need} bytes at offset {off}, "
                    f"only {len(data) - off} left; file has {len(data)} bytes, the cfg needs "
                    f"{expected_size(cfg, major, minor)}", file=path, layer=sec.index)
            arrays[name] = np.frombuffer(data, "<f4", count, off).astype(np.float32)
            off += need
        p = sec.params
        arrays["weights"] = arrays["weights"].reshape(
            p["filters"], p["in_shapes"][0][2] // p["groups"], p["size"], p["size"])
        for name, arr in arrays.items():
            check_weight_values(name, arr, path, sec.index)  # finite, within bounds.py
        if p["batch_normalize"] and np.any(arrays["rolling_variance"] < 0):
            raise WeightsError(f"conv layer {sec.index} has negative batch-norm variance "
                               "(weights for a different cfg?)", file=path, layer=sec.index)
        out.layers[sec.index] = ConvWeights(**arrays)
    if off != len(data):
        raise WeightsError(f"{len(data) - off} bytes left over after the last conv layer: file "
                           f"has {len(data)} bytes, the cfg needs {off} (weights for a "
                           "different cfg?)", file=path)
    return out


def write_weights(path: str | Path, cfg: DarknetConfig, layers: dict[int, ConvWeights],
                  version: tuple[int, int, int] = (0, 2, 5), seen: int = 0) -> None:
    """Inverse of :func:`read_weights`; used to generate weights for cfgs with none."""
    parts = [np.array(version, "<i4").tobytes(),
             np.array([seen], "<u8" if _seen_is_64bit(*version[:2]) else "<u4").tobytes()]
    for sec in cfg.layers:
        if sec.kind != "convolutional":
            continue
        lw = layers[sec.index]
        for name, _ in conv_float_counts(sec):
            parts.append(np.asarray(getattr(lw, name), "<f4").ravel().tobytes())
    Path(path).write_bytes(b"".join(parts))


def random_weights(cfg: DarknetConfig, seed: int = 0) -> dict[int, ConvWeights]:
    """Deterministic weights with trained-like scales (He-init, BN stats near their
    fixed point) so that activations neither vanish nor explode through 100+ layers."""
    rng = np.random.default_rng(seed)
    out: dict[int, ConvWeights] = {}
    for sec in cfg.layers:
        if sec.kind != "convolutional":
            continue
        p = sec.params
        n, cin = p["filters"], p["in_shapes"][0][2] // p["groups"]
        fan_in = cin * p["size"] ** 2
        w = rng.normal(0, np.sqrt(2.0 / fan_in), (n, cin, p["size"], p["size"])).astype(np.float32)
        lw = ConvWeights(biases=rng.normal(0, 0.1, n).astype(np.float32), weights=w)
        if p["batch_normalize"]:
            lw.scales = rng.uniform(0.5, 1.5, n).astype(np.float32)
            lw.rolling_mean = rng.normal(0, 0.2, n).astype(np.float32)
            lw.rolling_variance = rng.uniform(0.5, 2.0, n).astype(np.float32)
        out[sec.index] = lw
    return out

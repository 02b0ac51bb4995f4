"""The stated limits (README "Limits"): what one decoded image, one cfg and one weights file
may ask of this machine.

Why bounds at all: every input here is small on disk but can imply a huge amount of work or
memory (a 432 KB PNG that decodes to 20000x20000 pixels, a 260-byte cfg that declares a GiB
of parameters).  Each bound is checked from cheap facts (an image header, the shapes the cfg
implies) before anything large is allocated, and an exceeded bound is a one-line
:class:`UserError` that names the file and the number.  The values are far above anything a
real YOLO model or photo needs (largest real figures in the comments).
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .errors import CfgError, InputError, WeightsError

if TYPE_CHECKING:
    from darknet2tflite.darknet.config import DarknetConfig

#: pixels of one decoded image (width x height), checked from its header before decoding;
#: 50 Mpx is a full-resolution 50-megapixel phone photo.  Decoding + preprocessing costs about
#: 15 bytes per pixel (uint8 RGB + float32 RGB), so the bound caps that at ~750 MB.
MAX_IMAGE_PIXELS = 50_000_000
#: layers after [net]; yolov4 has 162.  Keras builds its graph recursively,
#: so the Python recursion limit is raised to cover this many (see :func:`graph_recursion`).
MAX_LAYERS = 4000
#: float parameters (weights + biases + batch-norm) a cfg may declare; yolov4 has 64.4 M;
#: 150 M float32 is 600 MB of weights, held several times while building.
MAX_PARAMS = 150_000_000
#: network input pixels (width x height); yolov4 takes 608x608.
MAX_INPUT_PIXELS = 4096 * 4096
#: largest magnitude a stored weight, bias, scale or batch-norm mean may have.  Trained values
#: are below 20 (yolov3-tiny: weights 2.4, biases 9.8, means 17.5); 1e6 leaves five orders of
#: magnitude for unusual but legal models while refusing garbage that would overflow float32
#: a few layers later (and then fail float parity with pages of numbers).
MAX_WEIGHT_ABS = 1e6
#: batch-norm variance is a square: its bound is the square of the others'.
MAX_VARIANCE = MAX_WEIGHT_ABS ** 2
#: Python frames allowed per layer for Keras' functional graph walk (measured with build_keras
#: on generated 1x1-conv chains: 4000 layers build with 1000 + 6 x 4000 = 25000; Python's
#: default of 1000 fails on a 1000-layer chain).
_FRAMES_PER_LAYER = 6


def check_cfg(cfg: "DarknetConfig") -> None:
    """Layers, input size and parameters a parsed, shape-inferred cfg implies."""
    from darknet2tflite.darknet.config import conv_float_counts
    n = len(cfg.layers)
    if n > MAX_LAYERS:
        raise CfgError(f"{n} layers; at most {MAX_LAYERS} are supported (README: Limits)",
                       file=cfg.path)
    if cfg.width * cfg.height > MAX_INPUT_PIXELS:
        raise CfgError(f"input {cfg.width}x{cfg.height} is {cfg.width * cfg.height} pixels; at "
                       f"most {MAX_INPUT_PIXELS} are supported (README: Limits)",
                       file=cfg.path, line=cfg.net.line, section="net", key="width")
    total = 0
    for sec in cfg.layers:
        if sec.kind == "convolutional":
            total += sum(k for _, k in conv_float_counts(sec))
            if total > MAX_PARAMS:
                raise CfgError(f"the layers up to this one declare {total} parameters; at "
                               f"most {MAX_PARAMS} are supported (README: Limits)",
                               file=cfg.path, line=sec.line, section=sec.header, layer=sec.index)


def check_weight_values(name: str, values, path, layer: int) -> None:
    """Finite and within :data:`MAX_WEIGHT_ABS` (:data:`MAX_VARIANCE` for variances)."""
    import numpy as np
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise WeightsError(f"conv layer {layer} has non-finite {name} values",
                           file=path, layer=layer)
    bound = MAX_VARIANCE if name == "rolling_variance" else MAX_WEIGHT_ABS
    worst = float(np.max(np.abs(values)))
    if worst > bound:
        raise WeightsError(f"conv layer {layer} has {name} of magnitude {worst:.3g}, above the "
                           f"bound {bound:.0e} (not trained weights for this cfg? README: "
                           "Limits)", file=path, layer=layer)


def check_image_size(width: int, height: int, where: str) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"{where}: image header declares {width}x{height} pixels")
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{where}: image is {width}x{height} = {width * height} pixels; at most "
                         f"{MAX_IMAGE_PIXELS} are decoded (README: Limits)")


def graph_recursion(n_layers: int = MAX_LAYERS) -> None:
    """Raise (never lower) the recursion limit so Keras can map a graph of ``n_layers``.

    Keras' functional graph walk recurses once per layer (keras/src/ops/function.py); with
    Python's default limit of 1000 a valid 1000-layer chain fails with RecursionError.  Python
    3.11 frames do not grow the C stack, so the limit can go up safely for bounded depth.
    """
    want = 1000 + _FRAMES_PER_LAYER * min(int(n_layers), MAX_LAYERS)
    if sys.getrecursionlimit() < want:
        sys.setrecursionlimit(want)

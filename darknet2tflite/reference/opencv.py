"""Independent float32 reference: OpenCV DNN's own Darknet importer.

The converter is checked against a second, unrelated implementation of the same
network, so this module deliberately shares no code with cfg.py / weights.py /
builder.py: it reads only what it needs from the .cfg text itself and lets
OpenCV 4.x (5.x dropped ``readNetFromDarknet``) read the weights.

Two measured differences between OpenCV 4.14 and AlexeyAB Darknet are corrected
so that the reference computes Darknet's function rather than OpenCV's variant:

* Batch-norm epsilon.  OpenCV's importer hard-codes 1e-6; Darknet normalises
  with ``sqrt(variance + .00001f)``.  OpenCV folds mean/variance/scale into
  per-channel factors when the BatchNorm layer object is constructed (while the
  net is read), so ``Net.setParam`` on the variance blob has no effect (measured:
  bit-identical heads).  Instead every BN variance is increased by 9e-6 in an
  in-memory copy of the .weights bytes and the net is read from that buffer (no
  temporary files).  The byte offsets come from the blob shapes of a first
  OpenCV load, and every patched slice is checked to equal the variance OpenCV
  itself read, so the patch cannot silently hit the wrong floats.
* Winograd 3x3 convolution is disabled; it moves yolov4-tiny heads by up to
  ~9e-6 relative, noise a reference should not carry.

Head mapping.  For a ``[yolo]``/``[region]`` section with Darknet layer index k
(0-based, ``[net]`` not counted) the importer inserts a ``Permute`` layer named
``permute_k`` (order 0,2,3,1: NCHW -> NHWC) whose single input is whatever
OpenCV layer ends Darknet layer k-1 (conv/bn/activation chain, route
concat/slice/identity, shortcut eltwise, upsample, ...), immediately followed by
the decoding ``Region`` layer (``yolo_k``, or ``detection_out`` for
``[region]``).  ``permute_k``'s output is therefore exactly the raw input of the
head, already NHWC, whatever kind of layer feeds it.  The mapping is verified
on every load (the layer exists, is a Permute, and the next layer is a Region).

Darknet defaults that OpenCV's importer gets wrong (activation of
[convolutional] = logistic, [maxpool] stride = 1 and size = stride, [upsample]
stride = 2, [yolo]/[region] classes = 20 and num = 1, [yolo] mask = all anchors)
are spelled out in the cfg text handed to OpenCV; everything else OpenCV would
compute differently is refused by :func:`opencv_supports`.  Findings and numbers:
docs/opencv_reference.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import cv2

__all__ = [
    "BN_VARIANCE_SHIFT",
    "OpenCVUnsupportedError",
    "opencv_decoded_layers",
    "opencv_head_layers",
    "opencv_heads",
    "opencv_net",
    "opencv_supports",
]

# Darknet: sqrt(var + 1e-5); OpenCV's Darknet importer: sqrt(var + 1e-6).
DARKNET_BN_EPS = 1e-5
OPENCV_BN_EPS = 1e-6
BN_VARIANCE_SHIFT = DARKNET_BN_EPS - OPENCV_BN_EPS

# Activations OpenCV 4.14 imports AND whose output was checked against the
# Darknet formula (docs/opencv_reference.md).  The importer rejects all others
# with "Unsupported activation".
SUPPORTED_ACTIVATIONS = frozenset({"linear", "leaky", "relu", "logistic", "tanh", "mish", "swish"})

HEAD_SECTIONS = frozenset({"yolo", "region"})

# Section -> options the importer honours (or that only matter for training /
# decoding).  Any other option with a non-neutral value is refused.  ``None``:
# every option is irrelevant because only the section's *input* is used.
_ALLOWED_OPTIONS: dict[str, frozenset[str] | None] = {
    "convolutional": frozenset({"filters", "size", "stride", "pad", "padding", "groups", "batch_normalize", "activation"}),
    "maxpool": frozenset({"size", "stride", "padding"}),
    "avgpool": frozenset(),
    "route": frozenset({"layers", "groups", "group_id"}),
    "shortcut": frozenset({"from", "activation", "weights_type", "weights_normalization"}),
    "upsample": frozenset({"stride"}),
    "reorg": frozenset({"stride"}),
    "sam": frozenset({"from", "activation"}),
    "scale_channels": frozenset({"from", "activation"}),
    "dropout": frozenset({"probability", "dropblock", "dropblock_size_rel", "dropblock_size_abs"}),
    "yolo": None,
    "region": None,
}
SUPPORTED_SECTIONS = frozenset(_ALLOWED_OPTIONS)

# Spellings Darknet accepts but OpenCV's importer does not know.
_SECTION_ALIASES = {"conv": "convolutional", "max": "maxpool", "avg": "avgpool"}

# Keys that never change inference (CUDA streams, training-only switches).
_INFERENCE_NEUTRAL = frozenset(
    {"stream", "wait_stream", "train_only_bn", "stopbackward", "dont_update", "burnin_update", "grad_centr"}
)
# (section, key) -> values equivalent to the key being absent.
_NEUTRAL_VALUES: dict[tuple[str, str], frozenset[str]] = {
    **{
        ("convolutional", k): frozenset({"0"})
        for k in (
            "flipped", "binary", "xnor", "bin_output", "antialiasing", "sway", "rotate", "stretch",
            "stretch_sway", "coordconv", "assisted_excitation", "cbn", "reverse",
        )
    },
    ("convolutional", "dilation"): frozenset({"1"}),
    ("maxpool", "maxpool_depth"): frozenset({"0"}),
    ("maxpool", "out_channels"): frozenset({"1"}),
    ("maxpool", "antialiasing"): frozenset({"0"}),
    ("maxpool", "maxpool_zero_nonmax"): frozenset({"0"}),
    ("upsample", "scale"): frozenset({"1", "1.", "1.0", "1.00"}),
    ("reorg", "reverse"): frozenset({"0"}),
    ("scale_channels", "scale_wh"): frozenset({"0"}),
}

Shape = tuple[int, int, int]  # (h, w, c)


class OpenCVUnsupportedError(ValueError):
    """The cfg uses something OpenCV's Darknet importer would compute differently."""


@dataclass
class _Section:
    """One cfg section; ``line`` is kept so refusals can point into the file."""

    kind: str
    line: int
    options: dict[str, str] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)


def _parse_cfg_text(text: str) -> tuple[dict[str, str], list[_Section]]:
    """Minimal Darknet-style cfg reader, independent of cfg.py on purpose.

    Like Darknet's ``strip``, all whitespace inside a line is dropped; lines
    starting with ``#`` or ``;`` are comments."""
    net: dict[str, str] = {}
    sections: list[_Section] = []
    current: _Section | None = None
    in_net = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            kind = line[1:].split("]", 1)[0]
            if kind in ("net", "network") and not sections and not in_net:
                in_net, current = True, None
            else:
                in_net = False
                current = _Section(kind=_SECTION_ALIASES.get(kind, kind), line=lineno)
                sections.append(current)
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if in_net:
            net.setdefault(key, value)
        elif current is not None:
            if key in current.options and current.options[key] != value:
                current.duplicates.append(key)
            current.options.setdefault(key, value)  # Darknet's option_find returns the first
    return net, sections


def _int(opts: dict[str, str], key: str, default: int) -> int:
    """Darknet reads ints with atoi(): leading number, trailing garbage ignored."""
    value = opts.get(key)
    if not value:
        return default
    try:
        return int(float(value.split(",")[0].split("#")[0]))
    except ValueError:
        return default


def _ints(value: str) -> list[int]:
    return [int(float(v)) for v in value.split("#")[0].split(",") if v]


def _floats(value: str) -> list[float]:
    return [float(v) for v in value.split("#")[0].split(",") if v]


def _check_section(i: int, sec: _Section, shapes: list[Shape], cur: Shape) -> str | None:
    """Why OpenCV would not reproduce Darknet for section ``i``, or None.

    ``shapes`` are the Darknet outputs (h, w, c) of sections 0..i-1; ``cur`` is
    this section's input."""
    where = f"section [{sec.kind}] #{i} (line {sec.line})"
    kind, opts = sec.kind, sec.options
    if kind not in SUPPORTED_SECTIONS:
        return f"{where}: OpenCV's Darknet importer does not support [{kind}] (or computes it differently)"
    if sec.duplicates:
        return f"{where}: key(s) {sorted(set(sec.duplicates))} given twice (Darknet uses the first, OpenCV the last)"

    allowed = _ALLOWED_OPTIONS[kind]
    if allowed is not None:
        for key, value in opts.items():
            if key in allowed or key in _INFERENCE_NEUTRAL or kind == "dropout":
                continue  # every dropout option is training-only
            if value in _NEUTRAL_VALUES.get((kind, key), ()):
                continue
            if kind == "convolutional" and key == "dilation" and _int(opts, "size", 1) == 1:
                continue  # Darknet forces dilation=1 for 1x1 kernels
            if kind in ("convolutional", "maxpool") and key in ("stride_x", "stride_y"):
                if _int(opts, key, 0) == _int(opts, "stride", 1):
                    continue
                return f"{where}: {key}={value} differs from stride; OpenCV ignores stride_x/stride_y"
            return f"{where}: option {key}={value} is ignored or computed differently by OpenCV's Darknet importer"

    if kind not in HEAD_SECTIONS:
        act = opts.get("activation")
        if kind == "convolutional" or kind in ("shortcut", "sam", "scale_channels"):
            act = act if act is not None else ("logistic" if kind == "convolutional" else "linear")
            if act not in SUPPORTED_ACTIVATIONS:
                return f"{where}: activation={act} is not supported by OpenCV's Darknet importer"
        elif act is not None and act != "linear":
            return f"{where}: activation={act} on [{kind}] would be applied by OpenCV but is ignored by Darknet"

    def ref(value: int) -> int:
        return value + i if value < 0 else value

    if kind == "convolutional":
        if _int(opts, "filters", 1) < 1 or _int(opts, "size", 1) < 1 or _int(opts, "stride", 1) < 1:
            return f"{where}: filters, size and stride must be positive"
        groups = _int(opts, "groups", 1)
        if groups < 1 or cur[2] % groups or _int(opts, "filters", 1) % groups:
            return f"{where}: groups={groups} does not divide {cur[2]} input channels / filters"
    elif kind == "maxpool":
        stride = _int(opts, "stride", 1)
        size = _int(opts, "size", stride)
        if stride < 1 or size < 1 or _int(opts, "padding", size - 1) < 0:
            return f"{where}: size/stride must be positive and padding non-negative"
    elif kind == "route":
        layers = _ints(opts.get("layers", ""))
        if not layers:
            return f"{where}: route without layers="
        idx = [ref(v) for v in layers]
        if any(j < 0 or j >= i for j in idx):
            return f"{where}: layers={opts['layers']} points outside 0..{i - 1}"
        if len({shapes[j][:2] for j in idx}) > 1:
            return f"{where}: route joins different spatial sizes"
        groups = _int(opts, "groups", 1)
        if groups > 1 and len(idx) > 1:
            return f"{where}: route groups= with several layers fails in OpenCV"
        if groups < 1 or _int(opts, "group_id", 0) not in range(groups) or shapes[idx[0]][2] % groups:
            return f"{where}: invalid groups/group_id"
    elif kind in ("shortcut", "sam", "scale_channels"):
        frm = opts.get("from", "").split("#")[0]
        if not frm or "," in frm.strip(","):
            return f"{where}: {kind} needs exactly one from= layer in OpenCV"
        j = ref(_int(opts, "from", 0))
        if j < 0 or j >= i:
            return f"{where}: from={frm} points outside 0..{i - 1}"
        if kind == "shortcut" and opts.get("weights_type", "none") != "none":
            return f"{where}: weighted shortcut (weights_type) is not supported by OpenCV"
        if kind == "shortcut" and shapes[j][:2] != cur[:2]:
            return f"{where}: shortcut of different spatial sizes is not supported by OpenCV"
        if kind == "sam" and shapes[j] != cur:
            return f"{where}: sam of different shapes {shapes[j]} * {cur}"
        if kind == "scale_channels" and (cur[:2] != (1, 1) or cur[2] != shapes[j][2]):
            return f"{where}: scale_channels needs a 1x1x{shapes[j][2]} input, got {cur}"
    elif kind == "upsample":
        if _int(opts, "stride", 2) < 1:
            return f"{where}: negative upsample stride (downsampling) is not supported by OpenCV"
    elif kind == "reorg":
        s = _int(opts, "stride", 1)
        if s < 1 or cur[0] % s or cur[1] % s:
            return f"{where}: reorg stride {s} does not divide {cur[:2]}"
    elif kind in HEAD_SECTIONS:
        num = _int(opts, "num", 1)
        anchors = _floats(opts.get("anchors", ""))
        if len(anchors) != 2 * num:
            return f"{where}: {len(anchors)} anchor values for num={num} (OpenCV requires exactly 2*num)"
        if kind == "yolo" and any(m < 0 or m >= num for m in _ints(opts.get("mask", "0"))):
            return f"{where}: mask index outside 0..{num - 1}"
        if _expected_channels(sec) != cur[2]:
            return f"{where}: input has {cur[2]} channels, head expects {_expected_channels(sec)}"
    return None


def _out_shape(i: int, sec: _Section, shapes: list[Shape], cur: Shape) -> Shape:
    """Darknet output shape (h, w, c) of a section accepted by _check_section."""
    h, w, c = cur
    o, kind = sec.options, sec.kind
    if kind == "convolutional":
        size, stride = _int(o, "size", 1), _int(o, "stride", 1)
        padding = size // 2 if _int(o, "pad", 0) else _int(o, "padding", 0)
        return ((h + 2 * padding - size) // stride + 1, (w + 2 * padding - size) // stride + 1, _int(o, "filters", 1))
    if kind == "maxpool":
        stride = _int(o, "stride", 1)
        size = _int(o, "size", stride)
        padding = _int(o, "padding", size - 1)
        return ((h + padding - size) // stride + 1, (w + padding - size) // stride + 1, c)
    if kind == "avgpool":
        return (1, 1, c)
    if kind == "route":
        idx = [v + i if v < 0 else v for v in _ints(o["layers"])]
        groups = _int(o, "groups", 1)
        return (shapes[idx[0]][0], shapes[idx[0]][1], sum(shapes[j][2] for j in idx) // groups)
    if kind == "upsample":
        s = _int(o, "stride", 2)
        return (h * s, w * s, c)
    if kind == "reorg":
        s = _int(o, "stride", 1)
        return (h // s, w // s, c * s * s)
    if kind in ("sam", "scale_channels"):
        j = _int(o, "from", 0)
        return shapes[j + i if j < 0 else j]
    return cur  # shortcut (Darknet keeps the previous layer's shape), dropout, heads


def _expected_channels(sec: _Section) -> int:
    o = sec.options
    classes, num = _int(o, "classes", 20), _int(o, "num", 1)
    if sec.kind == "yolo":
        mask = o.get("mask")
        return (len(_ints(mask)) if mask else num) * (classes + 5)
    return num * (_int(o, "coords", 4) + 1 + classes)


def _analyse(cfg_text: str) -> tuple[dict[str, str], list[_Section], str | None]:
    """Parse and check a cfg; the third item is the refusal reason (None = supported)."""
    net, sections = _parse_cfg_text(cfg_text)
    cur: Shape = (_int(net, "height", 416), _int(net, "width", 416), _int(net, "channels", 3))
    if min(cur) < 1:
        return net, sections, f"[net] has no positive height/width/channels: {cur}"
    if not any(s.kind in HEAD_SECTIONS for s in sections):
        return net, sections, "cfg has no [yolo] or [region] section"
    if sum(s.kind == "region" for s in sections) > 1:
        return net, sections, "OpenCV names every [region] layer 'detection_out'; only one is supported"
    shapes: list[Shape] = []
    for i, sec in enumerate(sections):
        reason = _check_section(i, sec, shapes, cur)
        if reason is not None:
            return net, sections, reason
        cur = _out_shape(i, sec, shapes, cur)
        if min(cur) < 1:
            return net, sections, f"section [{sec.kind}] #{i} (line {sec.line}) has empty output {cur}"
        shapes.append(cur)
    return net, sections, None


def _read_cfg(cfg_path: str | Path) -> str:
    return Path(cfg_path).read_text(encoding="utf-8", errors="replace")


def opencv_supports(cfg_path: str | Path) -> tuple[bool, str]:
    """Whether OpenCV 4.x's Darknet importer reproduces Darknet inference for this cfg.

    Decided from the cfg text alone (no OpenCV call, no weights) so callers can
    cheaply pick which parity tests may use this reference.  Returns
    ``(False, reason)`` for anything unsupported; only I/O errors raise."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv is a hard dependency
        return False, f"OpenCV is not importable: {exc}"
    if not hasattr(cv2.dnn, "readNetFromDarknet"):  # pragma: no cover - OpenCV 5
        return False, f"OpenCV {cv2.__version__} has no Darknet importer"
    _, _, reason = _analyse(_read_cfg(cfg_path))
    if reason is not None:
        return False, reason
    return True, "ok"


def _opencv_cfg_text(net: dict[str, str], sections: list[_Section]) -> str:
    """Re-emit the cfg with the Darknet defaults OpenCV's importer gets wrong spelled out."""
    lines = ["[net]"] + [f"{k}={v}" for k, v in net.items()]
    for sec in sections:
        opts = dict(sec.options)
        if sec.kind == "convolutional":
            opts.setdefault("activation", "logistic")  # OpenCV assumes linear
            opts.pop("stride_x", None)  # equal to stride (checked); OpenCV ignores them
            opts.pop("stride_y", None)
        elif sec.kind == "maxpool":
            stride = _int(opts, "stride", 1)  # OpenCV: stride=2, size=2
            opts["size"] = str(_int(opts, "size", stride))
            opts["stride"] = str(stride)
            opts.pop("stride_x", None)
            opts.pop("stride_y", None)
        elif sec.kind == "upsample":
            opts["stride"] = str(_int(opts, "stride", 2))  # OpenCV: 1
        elif sec.kind in HEAD_SECTIONS:
            opts["classes"] = str(_int(opts, "classes", 20))  # OpenCV: -1 (assertion)
            opts["num"] = str(_int(opts, "num", 1))
            if sec.kind == "yolo" and not opts.get("mask"):
                opts["mask"] = ",".join(str(m) for m in range(_int(opts, "num", 1)))
        lines.append(f"[{sec.kind}]")
        lines.extend(f"{k}={v}" for k, v in opts.items())
    return "\n".join(lines) + "\n"


def _shift_bn_variances(cv2_mod: Any, cfg_buf: np.ndarray, weights: bytes) -> bytes:
    """Copy of ``weights`` with every batch-norm variance increased by BN_VARIANCE_SHIFT.

    Layout (Darknet, shared by OpenCV's reader): header int32 major, minor,
    revision, then ``seen`` as uint64 if major*10+minor >= 2 else uint32; then
    per [convolutional] in cfg order: biases[n], and if batch-normalised
    scales[n], rolling_mean[n], rolling_variance[n]; then the weights.  The
    sizes are taken from the blobs OpenCV read, so the walk cannot disagree
    with the importer, and each patched slice is compared to OpenCV's variance."""
    net = cv2_mod.dnn.readNetFromDarknet(cfg_buf, np.frombuffer(weights, dtype=np.uint8))
    major, minor = (int(v) for v in np.frombuffer(weights, dtype=np.int32, count=2))
    offset = 12 + (8 if major * 10 + minor >= 2 else 4)
    names = list(net.getLayerNames())
    out = bytearray(weights)
    k = 0
    while k < len(names):
        layer = net.getLayer(names[k])
        if layer.type in ("Convolution", "InnerProduct"):
            shape = tuple(int(d) for d in layer.blobs[0].shape)
            n = shape[0]
            offset += 4 * n  # biases
            nxt = net.getLayer(names[k + 1]) if k + 1 < len(names) else None
            if nxt is not None and nxt.type == "BatchNorm":
                var_off = offset + 8 * n  # skip scales and rolling_mean
                if var_off + 4 * n > len(weights):
                    raise RuntimeError(f"weights file too short at OpenCV layer {names[k]}")
                stored = np.frombuffer(weights, dtype=np.float32, count=n, offset=var_off)
                seen = np.asarray(nxt.blobs[1], dtype=np.float32).reshape(-1)
                if not np.array_equal(stored, seen):
                    raise RuntimeError(f"weights layout mismatch at OpenCV layer {names[k]}; BN variance not found")
                out[var_off : var_off + 4 * n] = (stored + np.float32(BN_VARIANCE_SHIFT)).astype("<f4").tobytes()
                offset += 12 * n
                k += 1
            offset += 4 * int(np.prod(shape))
        k += 1
    if offset > len(weights):
        raise RuntimeError(f"weights file too short: the cfg needs {offset} bytes, the file has {len(weights)}")
    return bytes(out)


def _load(cfg_path: str | Path) -> tuple[dict[str, str], list[_Section]]:
    netopts, sections, reason = _analyse(_read_cfg(cfg_path))
    if reason is not None:
        raise OpenCVUnsupportedError(f"{cfg_path}: {reason}")
    return netopts, sections


def opencv_net(
    cfg_path: str | Path,
    weights_path: str | Path,
    *,
    darknet_bn_eps: bool = True,
    winograd: bool = False,
) -> cv2.dnn.Net:
    """A ready OpenCV net (backend OPENCV, target CPU) computing Darknet's function.

    The switches exist only so the two corrections can be measured; keep the
    defaults for reference outputs.  Raises OpenCVUnsupportedError when
    :func:`opencv_supports` says no."""
    import cv2

    netopts, sections = _load(cfg_path)
    cfg_buf = np.frombuffer(_opencv_cfg_text(netopts, sections).encode("ascii", errors="replace"), dtype=np.uint8)
    weights = Path(weights_path).read_bytes()
    if darknet_bn_eps:
        weights = _shift_bn_variances(cv2, cfg_buf, weights)
    net = cv2.dnn.readNetFromDarknet(cfg_buf, np.frombuffer(weights, dtype=np.uint8))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableWinograd(winograd)
    _verify_heads(net, sections)
    return net


def opencv_head_layers(cfg_path: str | Path) -> list[str]:
    """OpenCV layer names whose outputs are the raw head inputs (NHWC), in cfg order."""
    _, sections = _load(cfg_path)
    return [f"permute_{i}" for i, s in enumerate(sections) if s.kind in HEAD_SECTIONS]


def opencv_decoded_layers(cfg_path: str | Path) -> list[str]:
    """OpenCV's own decoding Region layers, one per head in cfg order.

    For one sample each yields (H*W*anchors, 5+classes) (OpenCV adds a leading
    N axis when N > 1): row ``(y*W + x)*anchors + a``, columns x, y, w, h
    relative to the input size, objectness, then objectness*class_prob (zeroed
    where below the layer's ``thresh``)."""
    _, sections = _load(cfg_path)
    return [f"yolo_{i}" if s.kind == "yolo" else "detection_out" for i, s in enumerate(sections) if s.kind in HEAD_SECTIONS]


def _verify_heads(net: Any, sections: list[_Section]) -> None:
    """Check the permute_k -> Region mapping described in the module docstring."""
    names = list(net.getLayerNames())
    pos = {n: p for p, n in enumerate(names)}
    for i, sec in enumerate(sections):
        if sec.kind not in HEAD_SECTIONS:
            continue
        perm = f"permute_{i}"
        p = pos.get(perm)
        if p is None or net.getLayer(perm).type != "Permute":
            raise RuntimeError(f"OpenCV net has no Permute layer {perm} for [{sec.kind}] #{i}")
        if p + 1 >= len(names) or net.getLayer(names[p + 1]).type != "Region":
            raise RuntimeError(f"OpenCV layer after {perm} is not the Region layer of [{sec.kind}] #{i}")


def _run(net: Any, outputs: Sequence[str], batch: np.ndarray) -> list[np.ndarray]:
    """Forward one sample at a time and concatenate (outputs must be (1, ...)).

    Per-sample is as fast as batched on CPU (measured 1.00 s vs 1.17 s for 8
    yolov4-tiny images, bit-identical), bounds memory for large calibration
    sets, and avoids OpenCV's [scale_channels] failure for N > 1."""
    per_output: list[list[np.ndarray]] = [[] for _ in outputs]
    for sample in batch:
        net.setInput(np.ascontiguousarray(sample.transpose(2, 0, 1)[None]))
        outs = net.forward(list(outputs))
        for acc, out in zip(per_output, outs):
            acc.append(np.array(out, dtype=np.float32, copy=True))
    return [np.concatenate(acc) for acc in per_output]


def opencv_heads(cfg_path: str | Path, weights_path: str | Path, batch: np.ndarray) -> list[np.ndarray]:
    """Raw head inputs of Darknet inference as computed by OpenCV DNN (float32 NHWC).

    ``batch``: float32 NHWC RGB in [0, 1] at the [net] height/width (N may be
    > 1), used as is (no resize, no channel swap).  Returns one (N, H, W, C)
    array per [yolo]/[region] section in cfg order: the output of the layer
    feeding it, before any decoding.  Raises OpenCVUnsupportedError when
    :func:`opencv_supports` says no, ValueError/TypeError for a bad batch."""
    netopts, sections = _load(cfg_path)
    x = np.asarray(batch)
    if x.dtype != np.float32:
        raise TypeError(f"batch must be float32, got {x.dtype}")
    want = (_int(netopts, "height", 416), _int(netopts, "width", 416), _int(netopts, "channels", 3))
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise ValueError(f"batch must be NHWC (N, {want[0]}, {want[1]}, {want[2]}) with N >= 1, got {x.shape}")
    net = opencv_net(cfg_path, weights_path)
    heads = [s for s in sections if s.kind in HEAD_SECTIONS]
    names = opencv_head_layers(cfg_path)
    results = _run(net, names, x)
    for sec, name, arr in zip(heads, names, results):
        if arr.ndim != 4 or arr.shape[0] != x.shape[0] or arr.shape[3] != _expected_channels(sec):
            raise RuntimeError(f"OpenCV output {name} has shape {arr.shape}, expected (N, H, W, {_expected_channels(sec)})")
    return results

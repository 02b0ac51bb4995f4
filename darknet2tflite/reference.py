"""Independent float32 reference: OpenCV DNN's own Darknet importer.

The converter is checked against a second, unrelated implementation of the same
network, so this module deliberately shares no code with cfg.py / weights.py /
builder.py: it parses only what it needs from the .cfg text itself and lets
OpenCV (4.x; 5.x dropped ``readNetFromDarknet``) read the weights.

Two measured differences between OpenCV 4.14 and AlexeyAB Darknet are corrected
so that the reference computes Darknet's function, not OpenCV's approximation:

* Batch norm epsilon: OpenCV's importer hard-codes 1e-6, Darknet uses 1e-5
  (``sqrt(variance + .00001f)``).  OpenCV folds the variance into per-channel
  scale factors when the BatchNorm layer object is *constructed* (i.e. while the
  net is read), so ``Net.setParam`` on the variance blob has no effect (measured:
  bit-identical heads).  Instead every BN variance is shifted by +9e-6 inside an
  in-memory copy of the .weights bytes, and the net is read from that buffer.
  The byte offsets are derived from the blob shapes of a first OpenCV load and
  each patched slice is checked against the variance OpenCV itself read.
* Winograd 3x3 convolution is disabled: it changes results by up to ~9e-6
  relative on yolov4-tiny heads, which is noise we do not want in a reference.

Head mapping: for a ``[yolo]``/``[region]`` section with Darknet layer index k
(0-based, ``[net]`` excluded) the importer inserts a ``Permute`` layer named
``permute_k`` (order 0,2,3,1, i.e. NCHW -> NHWC) whose only input is the output
of whatever OpenCV layer represents Darknet layer k-1 (conv+bn+activation chain,
route concat/slice/identity, shortcut eltwise, ...), followed by the Region layer
(``yolo_k``, or ``detection_out`` for ``[region]``).  The output of
``permute_k`` is therefore exactly the raw input of the head, already NHWC, for
any kind of feeding layer.  The mapping is verified (layer exists, is a Permute,
and is immediately followed by a Region layer) rather than assumed.

Darknet defaults that differ from OpenCV's importer defaults (activation of
[convolutional]/[connected] = logistic, [maxpool] stride = 1 and size = stride,
[upsample] stride = 2) are written explicitly into the cfg text handed to
OpenCV; everything OpenCV would silently compute differently is refused by
:func:`opencv_supports`.  See docs/opencv_reference.md for the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["OpenCVUnsupportedError", "opencv_heads", "opencv_supports"]

# Darknet: sqrt(var + 1e-5); OpenCV darknet importer: sqrt(var + 1e-6).
DARKNET_BN_EPS = 1e-5
OPENCV_BN_EPS = 1e-6
BN_VARIANCE_SHIFT = DARKNET_BN_EPS - OPENCV_BN_EPS

# Activations whose OpenCV implementation was checked numerically against the
# Darknet formula (docs/opencv_reference.md).  Everything else is either refused
# by the importer ("Unsupported activation") or not verified.
SUPPORTED_ACTIVATIONS = frozenset({"linear", "leaky", "relu", "logistic", "tanh", "mish", "swish"})

# Sections the importer turns into something equal to Darknet inference.
# Options not listed in _ALLOWED_OPTIONS for a section are refused when they
# carry a non-default value (see _check_section).
SUPPORTED_SECTIONS = frozenset(
    {
        "convolutional",
        "maxpool",
        "avgpool",
        "route",
        "shortcut",
        "upsample",
        "reorg",
        "sam",
        "scale_channels",
        "dropout",
        "yolo",
        "region",
    }
)
HEAD_SECTIONS = frozenset({"yolo", "region"})


class OpenCVUnsupportedError(ValueError):
    """The cfg uses something OpenCV's Darknet importer would compute differently."""


@dataclass
class _Section:
    """One cfg section; ``line`` is kept so refusals can point at the file."""

    kind: str
    line: int
    options: dict[str, str] = field(default_factory=dict)


def _parse_cfg_text(text: str) -> tuple[dict[str, str], list[_Section]]:
    """Minimal Darknet-style cfg reader (whitespace anywhere is insignificant,
    lines starting with ``#``/``;`` are comments), kept separate from cfg.py on
    purpose so a bug there cannot hide in both sides of a parity check."""
    net: dict[str, str] | None = None
    sections: list[_Section] = []
    current: dict[str, str] | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            kind = line[1 : line.index("]")] if "]" in line else line[1:]
            if kind in ("net", "network") and net is None and not sections:
                net = {}
                current = net
            else:
                sec = _Section(kind=kind, line=lineno)
                sections.append(sec)
                current = sec.options
            continue
        if "=" not in line or current is None:
            continue
        key, _, value = line.partition("=")
        current[key] = value
    return net or {}, sections


def _int(opts: dict[str, str], key: str, default: int) -> int:
    """Darknet reads ints with atoi: leading integer part, garbage tolerated."""
    value = opts.get(key)
    if value is None or value == "":
        return default
    try:
        return int(float(value.split(",")[0].split("#")[0]))
    except ValueError:
        return default


def _float(opts: dict[str, str], key: str, default: float) -> float:
    value = opts.get(key)
    if value is None or value == "":
        return default
    try:
        return float(value.split("#")[0])
    except ValueError:
        return default


def _ints(value: str) -> list[int]:
    return [int(float(v)) for v in value.split("#")[0].split(",") if v != ""]


# Options that are harmless for inference (training / decode-only / bookkeeping)
# or that the importer was measured to honour.  Anything else with a value that
# changes the forward pass makes opencv_supports() say no.
_INFERENCE_NEUTRAL = frozenset({"stream", "wait_stream", "train_only_bn", "stopbackward", "dont_update", "burnin_update"})
_ALLOWED_OPTIONS: dict[str, frozenset[str]] = {
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
    "yolo": None,  # type: ignore[dict-item]  # any option: only the raw input is used
    "region": None,  # type: ignore[dict-item]
}
# Option values that are equivalent to "option absent".
_NEUTRAL_VALUES: dict[tuple[str, str], set[str]] = {
    ("convolutional", "dilation"): {"1"},
    ("convolutional", "flipped"): {"0"},
    ("convolutional", "binary"): {"0"},
    ("convolutional", "xnor"): {"0"},
    ("convolutional", "bin_output"): {"0"},
    ("convolutional", "antialiasing"): {"0"},
    ("convolutional", "sway"): {"0"},
    ("convolutional", "rotate"): {"0"},
    ("convolutional", "stretch"): {"0"},
    ("convolutional", "stretch_sway"): {"0"},
    ("convolutional", "coordconv"): {"0"},
    ("convolutional", "assisted_excitation"): {"0"},
    ("convolutional", "cbn"): {"0"},
    ("maxpool", "maxpool_depth"): {"0"},
    ("maxpool", "out_channels"): {"1"},
    ("maxpool", "antialiasing"): {"0"},
    ("maxpool", "maxpool_zero_nonmax"): {"0"},
    ("upsample", "scale"): {"1", "1.0", "1.", "1.00"},
    ("reorg", "reverse"): {"0"},
    ("scale_channels", "scale_wh"): {"0"},
}


def _check_section(i: int, sec: _Section, shapes: list[tuple[int, int, int]], cur: tuple[int, int, int]) -> str | None:
    """Return why OpenCV would not reproduce Darknet for section ``i`` (or None).

    ``shapes`` are the (h, w, c) outputs of sections 0..i-1, ``cur`` is the shape
    of the section's input (output of i-1, or the network input)."""
    where = f"section [{sec.kind}] #{i} (line {sec.line})"
    kind = sec.kind
    if kind not in SUPPORTED_SECTIONS:
        return f"{where}: OpenCV's Darknet importer does not support [{kind}] (or computes it differently)"
    allowed = _ALLOWED_OPTIONS[kind]
    if allowed is not None:
        for key, value in sec.options.items():
            if key in allowed or key in _INFERENCE_NEUTRAL:
                continue
            neutral = _NEUTRAL_VALUES.get((kind, key))
            if neutral is not None and value in neutral:
                continue
            if kind == "convolutional" and key == "dilation" and _int(sec.options, "size", 1) == 1:
                continue  # Darknet forces dilation=1 for 1x1 kernels
            if kind == "convolutional" and key in ("stride_x", "stride_y"):
                if _int(sec.options, key, 0) == _int(sec.options, "stride", 1):
                    continue
                return f"{where}: {key}={value} differs from stride; OpenCV ignores stride_x/stride_y"
            if kind == "maxpool" and key in ("stride_x", "stride_y"):
                if _int(sec.options, key, 0) == _int(sec.options, "stride", 1):
                    continue
                return f"{where}: {key}={value} differs from stride; OpenCV ignores stride_x/stride_y"
            if kind == "dropout":
                continue  # every dropout option is training-only
            return f"{where}: option {key}={value} is not reproduced by OpenCV's Darknet importer"

    act = sec.options.get("activation")
    if kind == "convolutional":
        act = act if act is not None else "logistic"
        if act not in SUPPORTED_ACTIVATIONS:
            return f"{where}: activation={act} is not supported by OpenCV's Darknet importer"
    elif kind in ("shortcut", "sam", "scale_channels"):
        act = act if act is not None else "linear"
        if act not in SUPPORTED_ACTIVATIONS:
            return f"{where}: activation={act} is not supported by OpenCV's Darknet importer"
    elif act is not None and act != "linear":
        # OpenCV appends an activation after *any* section that has the key,
        # Darknet ignores it on these sections.
        return f"{where}: activation={act} on [{kind}] would be applied by OpenCV but is ignored by Darknet"

    def ref(value: int) -> int:
        return value + i if value < 0 else value

    if kind == "route":
        layers = _ints(sec.options.get("layers", ""))
        if not layers:
            return f"{where}: route without layers="
        idx = [ref(v) for v in layers]
        if any(j < 0 or j >= i for j in idx):
            return f"{where}: route layers={sec.options['layers']} points outside 0..{i - 1}"
        hw = {shapes[j][:2] for j in idx}
        if len(hw) > 1:
            return f"{where}: route joins different spatial sizes {sorted(hw)}"
        groups = _int(sec.options, "groups", 1)
        if groups > 1 and len(idx) > 1:
            return f"{where}: route groups= with several layers is not reproduced by OpenCV"
    elif kind in ("shortcut", "sam", "scale_channels"):
        frm = sec.options.get("from", "")
        if "," in frm.split("#")[0].strip(","):
            return f"{where}: {kind} from several layers is not supported by OpenCV"
        j = ref(_int(sec.options, "from", 0))
        if j < 0 or j >= i:
            return f"{where}: from={frm} points outside 0..{i - 1}"
        if kind == "shortcut":
            if sec.options.get("weights_type", "none") != "none":
                return f"{where}: weighted shortcut (weights_type) is not supported by OpenCV"
            if shapes[j] != cur:
                return f"{where}: shortcut of different shapes {shapes[j]} + {cur} (Darknet and OpenCV differ)"
        elif kind == "sam":
            if shapes[j] != cur:
                return f"{where}: sam of different shapes {shapes[j]} * {cur}"
        elif kind == "scale_channels":
            if cur[:2] != (1, 1) or cur[2] != shapes[j][2]:
                return f"{where}: scale_channels expects a 1x1x{shapes[j][2]} input, got {cur}"
    elif kind == "upsample":
        if _int(sec.options, "stride", 2) < 1:
            return f"{where}: negative upsample stride (downsampling) is not supported by OpenCV"
    elif kind == "maxpool":
        size = _int(sec.options, "size", _int(sec.options, "stride", 1))
        padding = _int(sec.options, "padding", size - 1)
        if padding < 0:
            return f"{where}: negative maxpool padding"
    elif kind == "convolutional":
        if _int(sec.options, "filters", 1) < 1 or _int(sec.options, "size", 1) < 1:
            return f"{where}: filters and size must be positive"
        if cur[2] % max(_int(sec.options, "groups", 1), 1):
            return f"{where}: groups does not divide {cur[2]} input channels"
    return None


def _out_shape(i: int, sec: _Section, shapes: list[tuple[int, int, int]], cur: tuple[int, int, int]) -> tuple[int, int, int]:
    """Darknet output shape (h, w, c) of a section already accepted by _check_section."""
    h, w, c = cur
    o = sec.options
    kind = sec.kind

    def ref(value: int) -> int:
        return value + i if value < 0 else value

    if kind == "convolutional":
        size = _int(o, "size", 1)
        stride = _int(o, "stride", 1)
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
        idx = [ref(v) for v in _ints(o["layers"])]
        groups = max(_int(o, "groups", 1), 1)
        return (shapes[idx[0]][0], shapes[idx[0]][1], sum(shapes[j][2] for j in idx) // groups)
    if kind == "upsample":
        s = _int(o, "stride", 2)
        return (h * s, w * s, c)
    if kind == "reorg":
        s = _int(o, "stride", 1)
        return (h // s, w // s, c * s * s)
    if kind in ("sam", "scale_channels"):
        j = ref(_int(o, "from", 0))
        return shapes[j]
    return cur  # shortcut, dropout, yolo, region


def _analyse(cfg_text: str) -> tuple[dict[str, str], list[_Section], list[tuple[int, int, int]], str | None]:
    net, sections = _parse_cfg_text(cfg_text)
    cur = (_int(net, "height", 416), _int(net, "width", 416), _int(net, "channels", 3))
    shapes: list[tuple[int, int, int]] = []
    if not sections:
        return net, sections, shapes, "cfg has no layer sections"
    if not any(s.kind in HEAD_SECTIONS for s in sections):
        return net, sections, shapes, "cfg has no [yolo] or [region] section"
    if sum(s.kind == "region" for s in sections) > 1:
        return net, sections, shapes, "OpenCV names every [region] layer 'detection_out'; only one is supported"
    for i, sec in enumerate(sections):
        reason = _check_section(i, sec, shapes, cur)
        if reason is not None:
            return net, sections, shapes, reason
        cur = _out_shape(i, sec, shapes, cur)
        if min(cur) < 1:
            return net, sections, shapes, f"section [{sec.kind}] #{i} (line {sec.line}) has empty output {cur}"
        shapes.append(cur)
    return net, sections, shapes, None


def opencv_supports(cfg_path: str | Path) -> tuple[bool, str]:
    """Whether OpenCV 4.x's Darknet importer reproduces Darknet inference for this cfg.

    Answers from the cfg text alone (no OpenCV call, no weights), so callers can
    decide cheaply whether a parity test can use this reference.  Never raises
    for an unsupported construct; I/O errors still propagate."""
    try:
        import cv2  # noqa: F401
    except ImportError as exc:  # pragma: no cover - opencv is a hard dependency
        return False, f"OpenCV is not importable: {exc}"
    text = Path(cfg_path).read_text(encoding="utf-8", errors="replace")
    _, _, _, reason = _analyse(text)
    if reason is not None:
        return False, reason
    return True, "ok"


def _opencv_cfg_text(net: dict[str, str], sections: list[_Section]) -> str:
    """Re-emit the cfg with Darknet defaults that OpenCV's importer gets wrong spelled out."""
    lines = ["[net]"] + [f"{k}={v}" for k, v in net.items()]
    for sec in sections:
        opts = dict(sec.options)
        if sec.kind == "convolutional":
            opts.setdefault("activation", "logistic")  # Darknet default; OpenCV assumes linear
        elif sec.kind == "maxpool":
            stride = _int(opts, "stride", 1)  # OpenCV defaults stride=2, size=2
            opts["stride"] = str(stride)
            opts["size"] = str(_int(opts, "size", stride))
            opts.pop("stride_x", None)  # equal to stride (checked), OpenCV ignores them anyway
            opts.pop("stride_y", None)
        elif sec.kind == "upsample":
            opts["stride"] = str(_int(opts, "stride", 2))  # OpenCV defaults to 1
        elif sec.kind == "convolutional":
            pass
        if sec.kind == "convolutional":
            opts.pop("stride_x", None)
            opts.pop("stride_y", None)
        lines.append(f"[{sec.kind}]")
        lines.extend(f"{k}={v}" for k, v in opts.items())
    return "\n".join(lines) + "\n"


def _shift_bn_variances(cv2: object, cfg_buf: np.ndarray, weights: bytes) -> bytes:
    """Return a copy of ``weights`` with every batch-norm variance increased by 9e-6.

    The layout is taken from the blobs OpenCV itself read (so it cannot disagree
    with the importer): per [convolutional]/[connected] layer, in order, the
    file holds biases[n], then if batch-normalised scales[n], rolling_mean[n],
    rolling_variance[n], then the weights.  OpenCV keeps the conv bias as a conv
    blob only when there is no BatchNorm."""
    net = cv2.dnn.readNetFromDarknet(cfg_buf, np.frombuffer(weights, dtype=np.uint8))  # type: ignore[attr-defined]
    header = np.frombuffer(weights, dtype=np.int32, count=3)
    major, minor = int(header[0]), int(header[1])
    offset = 12 + (8 if major * 10 + minor >= 2 else 4)
    names = list(net.getLayerNames())
    out = bytearray(weights)
    k = 0
    while k < len(names):
        layer = net.getLayer(names[k])
        if layer.type in ("Convolution", "InnerProduct"):
            wblob = layer.blobs[0]
            n = int(wblob.shape[0])
            offset += 4 * n  # biases
            nxt = net.getLayer(names[k + 1]) if k + 1 < len(names) else None
            if nxt is not None and nxt.type == "BatchNorm":
                var_off = offset + 8 * n  # after scales and rolling_mean
                stored = np.frombuffer(weights, dtype=np.float32, count=n, offset=var_off)
                expected = np.asarray(nxt.blobs[1], dtype=np.float32).reshape(-1)
                if stored.shape != expected.shape or not np.array_equal(stored, expected):
                    raise RuntimeError(f"weights layout mismatch at OpenCV layer {names[k]}: cannot patch BN variance")
                patched = (stored + np.float32(BN_VARIANCE_SHIFT)).astype(np.float32)
                out[var_off : var_off + 4 * n] = patched.tobytes()
                offset += 12 * n
                k += 1
            offset += 4 * int(np.prod(wblob.shape))
        k += 1
    if offset > len(weights):
        raise RuntimeError(f"weights file too short: OpenCV layout needs {offset} bytes, file has {len(weights)}")
    return bytes(out)


def _head_names(cv2: object, net: object, sections: list[_Section]) -> list[str]:
    """OpenCV output names holding the raw input of each head (see module docstring)."""
    names = list(net.getLayerNames())  # type: ignore[attr-defined]
    pos = {n: p for p, n in enumerate(names)}
    result = []
    for i, sec in enumerate(sections):
        if sec.kind not in HEAD_SECTIONS:
            continue
        perm = f"permute_{i}"
        if perm not in pos:
            raise RuntimeError(f"OpenCV net has no layer {perm} for [{sec.kind}] #{i}")
        p = pos[perm]
        if net.getLayer(perm).type != "Permute" or p + 1 >= len(names):  # type: ignore[attr-defined]
            raise RuntimeError(f"OpenCV layer {perm} is not the Permute feeding [{sec.kind}] #{i}")
        head = net.getLayer(names[p + 1])  # type: ignore[attr-defined]
        if head.type != "Region":
            raise RuntimeError(f"OpenCV layer after {perm} is {head.type}, expected Region")
        result.append(perm)
    return result


def _expected_channels(sec: _Section) -> int | None:
    o = sec.options
    classes = _int(o, "classes", 20)
    if sec.kind == "yolo":
        mask = o.get("mask")
        n = len(_ints(mask)) if mask else _int(o, "num", 1)
        return n * (classes + 5)
    if sec.kind == "region":
        return _int(o, "num", 1) * (_int(o, "coords", 4) + 1 + classes)
    return None


def _build_net(cfg_path: str | Path, weights_path: str | Path, fix_eps: bool = True) -> tuple[object, list[_Section], dict[str, str]]:
    import cv2

    text = Path(cfg_path).read_text(encoding="utf-8", errors="replace")
    netopts, sections, _, reason = _analyse(text)
    if reason is not None:
        raise OpenCVUnsupportedError(f"{cfg_path}: {reason}")
    cfg_buf = np.frombuffer(_opencv_cfg_text(netopts, sections).encode("ascii", errors="replace"), dtype=np.uint8)
    weights = Path(weights_path).read_bytes()
    if fix_eps:
        weights = _shift_bn_variances(cv2, cfg_buf, weights)
    net = cv2.dnn.readNetFromDarknet(cfg_buf, np.frombuffer(weights, dtype=np.uint8))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableWinograd(False)
    return net, sections, netopts


def _forward(net: object, sections: list[_Section], netopts: dict[str, str], batch: np.ndarray, extra: list[str] | None = None) -> list[np.ndarray]:
    """Run the net on an NHWC batch; returns head inputs (NHWC) then ``extra`` outputs raw."""
    import cv2

    x = np.asarray(batch)
    if x.dtype != np.float32:
        raise TypeError(f"batch must be float32, got {x.dtype}")
    want = (_int(netopts, "height", 416), _int(netopts, "width", 416), _int(netopts, "channels", 3))
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ValueError(f"batch must be NHWC (N, {want[0]}, {want[1]}, {want[2]}), got {x.shape}")
    heads = _head_names(cv2, net, sections)
    net.setInput(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # type: ignore[attr-defined]
    outs = net.forward(heads + list(extra or []))  # type: ignore[attr-defined]
    head_secs = [s for s in sections if s.kind in HEAD_SECTIONS]
    result: list[np.ndarray] = []
    for sec, name, out in zip(head_secs, heads, outs[: len(heads)]):
        arr = np.ascontiguousarray(out, dtype=np.float32)
        ch = _expected_channels(sec)
        if arr.ndim != 4 or arr.shape[0] != x.shape[0] or (ch is not None and arr.shape[3] != ch):
            raise RuntimeError(f"OpenCV output {name} has shape {arr.shape}, expected (N, H, W, {ch})")
        result.append(arr)
    result.extend(np.asarray(o) for o in outs[len(heads) :])
    return result


def opencv_heads(cfg_path: str | Path, weights_path: str | Path, batch: np.ndarray) -> list[np.ndarray]:
    """Raw head inputs of Darknet inference as computed by OpenCV DNN (float32, NHWC).

    ``batch``: float32 NHWC RGB in [0, 1] at the [net] width/height (N may be > 1);
    it is used as is (no resize, no channel swap).  Returns one (N, H, W, C)
    array per [yolo]/[region] section in cfg order: the output of the layer that
    feeds it, before any decoding.  Raises OpenCVUnsupportedError when
    :func:`opencv_supports` says no."""
    net, sections, netopts = _build_net(cfg_path, weights_path)
    return _forward(net, sections, netopts, batch)

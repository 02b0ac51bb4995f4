"""Darknet .cfg parser.

Darknet itself silently falls back to defaults for options it does not find and prints
"Unused field" for ones it does not know; a converter that did the same would produce a
model that quietly differs from the one the user trained. So here every option is either
understood (and validated), known to matter only for training (accepted and ignored), or an
error naming file, line, section and key.
"""
from __future__ import annotations

from pathlib import Path
from stat import S_ISREG
from typing import Any, Callable

from darknet2tflite.errors import CfgError
from darknet2tflite.darknet.config import DarknetConfig, MAX_CHANNELS, MAX_SPATIAL, Option, Section
from darknet2tflite.darknet.shapes import infer_shapes

MAX_CFG_BYTES = 16 * 1024 * 1024

#: Darknet accepts these header spellings (parser.c string_to_layer_type).
ALIASES: dict[str, str] = {
    "net": "net", "network": "net",
    "convolutional": "convolutional", "conv": "convolutional",
    "maxpool": "maxpool", "max": "maxpool",
    "avgpool": "avgpool", "avg": "avgpool",
    "route": "route",
    "shortcut": "shortcut",
    "upsample": "upsample",
    "reorg": "reorg",
    "sam": "sam",
    "scale_channels": "scale_channels",
    "dropout": "dropout",
    "yolo": "yolo",
    "region": "region",
}

#: Sections Darknet knows but this project cannot convert (yet); named in the error.
KNOWN_UNSUPPORTED = {
    "local", "activation", "crnn", "gru", "lstm", "conv_lstm", "history", "rnn", "conn",
    "connected", "local_avg", "local_avgpool", "reorg3d", "lrn", "normalization", "batchnorm",
    "soft", "softmax", "contrastive", "crop", "cost", "detection", "gaussian_yolo",
    "empty", "silence", "implicit",
}

ACTIVATIONS = (
    "linear", "leaky", "relu", "relu6", "logistic", "mish", "hard_mish", "swish", "tanh",
    "elu", "selu", "gelu", "relie", "ramp", "loggy", "hardtan", "lhtan",
)

#: Options that only steer training or Darknet's own runtime: accepted, no effect here.
NET_TRAINING_KEYS = frozenset("""
batch subdivisions momentum decay angle saturation exposure hue learning_rate burn_in
max_batches policy steps scales seq_scales step scale gamma power mosaic cutmix mixup flip blur
gaussian_noise max_crop min_crop aspect sgdr_cycle sgdr_mult learning_rate_min time_steps
track augment_speed sequential_subdivisions try_fix_nan weights_reject_freq equidistant_point
badlabels_rejection_percentage num_sigmas_reject_badlabels ema_alpha use_cuda_graph loss_scale
dynamic_minibatch optimized_memory workspace_size_limit_mb adam b1 b2 eps mosaic_bound
contrastive contrastive_jit_flip contrastive_color unsupervised label_smooth_eps resize_step
attention adversarial_lr max_chart_loss show_receptive_field inputs jitter
""".split())

LAYER_TRAINING_KEYS = frozenset("""
clip onlyforward dont_update burnin_update stopbackward train_only_bn dontload dontloadscales
learning_rate stream wait_stream
""".split())

KIND_TRAINING_KEYS: dict[str, frozenset[str]] = {
    "convolutional": frozenset("flipped dot angle grad_centr reverse assisted_excitation".split()),
    "maxpool": frozenset(["maxpool_zero_nonmax"]),
    "dropout": frozenset("probability dropblock dropblock_size_rel dropblock_size_abs".split()),
    "yolo": frozenset("""
        jitter ignore_thresh truth_thresh random iou_normalizer iou_loss cls_normalizer
        obj_normalizer delta_normalizer iou_thresh iou_thresh_kind beta_nms nms_kind max_delta
        counters_per_class label_smooth_eps objectness_smooth resize focal_loss show_details
        track_history_size sim_thresh dets_for_track dets_for_show track_ciou_norm max
        """.split()),
    "region": frozenset("""
        jitter rescore thresh classfix absolute random coord_scale object_scale noobject_scale
        mask_scale class_scale bias_match log sqrt focal_loss resize max
        """.split()),
}


_REQUIRED = object()


class _Reader:
    """Typed access to a section's options that records which keys were consumed."""

    def __init__(self, section: Section) -> None:
        self.s = section
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.s.options

    def raw(self, key: str, default: Any = _REQUIRED) -> Any:
        self.used.add(key)
        opt = self.s.options.get(key)
        if opt is None:
            if default is _REQUIRED:
                raise self.s.error(f"required option '{key}' is missing", key)
            return default
        return opt.value

    def int(self, key: str, default: Any = _REQUIRED, lo: int | None = None,
            hi: int | None = None) -> int:
        v = self.raw(key, default)
        if not isinstance(v, str):
            return v
        try:
            n = int(v, 10)
        except ValueError:
            raise self.s.error(f"expected an integer, got '{v}'", key) from None
        return self._bounded(key, n, lo, hi)

    def float(self, key: str, default: Any = _REQUIRED, lo: float | None = None,
              hi: float | None = None) -> float:
        v = self.raw(key, default)
        if not isinstance(v, str):
            return v
        try:
            x = float(v)
        except ValueError:
            raise self.s.error(f"expected a number, got '{v}'", key) from None
        if x != x or x in (float("inf"), float("-inf")):
            raise self.s.error(f"expected a finite number, got '{v}'", key)
        return self._bounded(key, x, lo, hi)

    def ints(self, key: str, default: Any = _REQUIRED) -> list[int]:
        v = self.raw(key, default)
        if not isinstance(v, str):
            return v
        out = []
        for part in _split_list(v):
            try:
                out.append(int(part, 10))
            except ValueError:
                raise self.s.error(f"expected a comma-separated list of integers, got '{v}'",
                                   key) from None
        if not out:
            raise self.s.error("empty list", key)
        return out

    def floats(self, key: str, default: Any = _REQUIRED) -> list[float]:
        v = self.raw(key, default)
        if not isinstance(v, str):
            return v
        out = []
        for part in _split_list(v):
            try:
                x = float(part)
            except ValueError:
                raise self.s.error(f"expected a comma-separated list of numbers, got '{v}'",
                                   key) from None
            if x != x or abs(x) == float("inf"):
                raise self.s.error(f"expected finite numbers, got '{v}'", key)
            out.append(x)
        if not out:
            raise self.s.error("empty list", key)
        return out

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        v = self.raw(key, default).strip().lower()
        if v not in choices:
            raise self.s.error(f"unsupported value '{v}' (supported: {', '.join(choices)})", key)
        return v

    def flag(self, key: str, default: int = 0) -> bool:
        return bool(self.int(key, default, lo=0, hi=1))

    def must_be(self, key: str, allowed: Any, what: str) -> None:
        """Accept an option only at the value whose semantics we implement."""
        self.used.add(key)
        opt = self.s.options.get(key)
        if opt is not None and opt.value.strip().lower() != str(allowed):
            raise self.s.error(f"'{key}={opt.value}' is not supported: {what}", key)

    def _bounded(self, key: str, x: Any, lo: Any, hi: Any) -> Any:
        if lo is not None and x < lo:
            raise self.s.error(f"value {x} is below the minimum {lo}", key)
        if hi is not None and x > hi:
            raise self.s.error(f"value {x} is above the maximum {hi}", key)
        return x


def _split_list(v: str) -> list[str]:
    return [p.strip() for p in v.split(",") if p.strip() != ""]


# --------------------------------------------------------------------------- section specs

SectionSpec = Callable[[_Reader], dict[str, Any]]
SECTION_SPECS: dict[str, SectionSpec] = {}


def section_spec(kind: str) -> Callable[[SectionSpec], SectionSpec]:
    def deco(fn: SectionSpec) -> SectionSpec:
        SECTION_SPECS[kind] = fn
        return fn
    return deco


@section_spec("net")
def _net(r: _Reader) -> dict[str, Any]:
    return dict(
        width=r.int("width", lo=1, hi=MAX_SPATIAL),
        height=r.int("height", lo=1, hi=MAX_SPATIAL),
        channels=_net_channels(r),
        letter_box=r.int("letter_box", 0, lo=0, hi=1),
    )


def _net_channels(r: _Reader) -> int:
    """Images reach a network only as RGB (3) or Darknet grey (1); any other count is refused
    here, at parse time, rather than after the model was built."""
    c = r.int("channels", 3, lo=1, hi=4)
    if c not in (1, 3):
        raise r.s.error(f"channels={c}: images can only be fed as RGB (channels=3) or grey "
                        "(channels=1)", "channels")
    return c


def _activation(r: _Reader, default: str) -> str:
    return r.choice("activation", default, ACTIVATIONS)


@section_spec("convolutional")
def _conv(r: _Reader) -> dict[str, Any]:
    size = r.int("size", 1, lo=1, hi=64)
    stride = r.int("stride", 1, lo=1, hi=64)
    stride_x = r.int("stride_x", stride, lo=1, hi=64)
    stride_y = r.int("stride_y", stride, lo=1, hi=64)
    pad = r.flag("pad", 0)
    padding = r.int("padding", 0, lo=0, hi=64)
    if pad:
        padding = size // 2
    dilation = r.int("dilation", 1, lo=1, hi=64)
    if size == 1:
        dilation = 1
    bn = r.flag("batch_normalize", 0) or r.flag("cbn", 0)
    for key, what in (("binary", "binary weights"), ("xnor", "XNOR nets"),
                      ("bin_output", "binary outputs"), ("sway", "deformable conv"),
                      ("rotate", "deformable conv"), ("stretch", "deformable conv"),
                      ("stretch_sway", "deformable conv"), ("antialiasing", "antialiasing blur"),
                      ("coordconv", "coordconv"), ("deform", "deformable conv")):
        r.must_be(key, 0, f"{what} is not supported")
    if r.has("share_index"):
        raise r.s.error("weight sharing (share_index) is not supported", "share_index")
    return dict(
        filters=r.int("filters", 1, lo=1, hi=MAX_CHANNELS), size=size,
        stride_x=stride_x, stride_y=stride_y, padding=padding, dilation=dilation,
        groups=r.int("groups", 1, lo=1, hi=MAX_CHANNELS), batch_normalize=bn,
        activation=_activation(r, "logistic"),
    )


@section_spec("maxpool")
def _maxpool(r: _Reader) -> dict[str, Any]:
    stride = r.int("stride", 1, lo=1, hi=64)
    stride_x = r.int("stride_x", stride, lo=1, hi=64)
    stride_y = r.int("stride_y", stride, lo=1, hi=64)
    size = r.int("size", stride, lo=1, hi=64)
    padding = r.int("padding", size - 1, lo=0, hi=128)
    r.must_be("maxpool_depth", 0, "channel-wise maxpool is not supported")
    r.must_be("out_channels", 1, "only used with maxpool_depth")
    r.must_be("antialiasing", 0, "antialiasing blur is not supported")
    return dict(size=size, stride_x=stride_x, stride_y=stride_y, padding=padding)


@section_spec("avgpool")
def _avgpool(r: _Reader) -> dict[str, Any]:
    return {}


@section_spec("route")
def _route(r: _Reader) -> dict[str, Any]:
    return dict(layers=r.ints("layers"), groups=r.int("groups", 1, lo=1, hi=MAX_CHANNELS),
                group_id=r.int("group_id", 0, lo=0, hi=MAX_CHANNELS))


@section_spec("shortcut")
def _shortcut(r: _Reader) -> dict[str, Any]:
    r.must_be("weights_type", "none", "weighted shortcuts are not supported")
    r.must_be("weights_normalization", "none", "weighted shortcuts are not supported")
    frm = r.ints("from")
    if len(frm) != 1:
        raise r.s.error("only a single 'from' layer is supported", "from")
    return dict(from_=frm[0], activation=_activation(r, "linear"))


@section_spec("upsample")
def _upsample(r: _Reader) -> dict[str, Any]:
    stride = r.int("stride", 2, lo=1, hi=64)
    return dict(stride=stride, scale=r.float("scale", 1.0))


@section_spec("reorg")
def _reorg(r: _Reader) -> dict[str, Any]:
    r.must_be("reverse", 0, "reverse reorg is not supported")
    return dict(stride=r.int("stride", 1, lo=1, hi=16))


@section_spec("sam")
def _sam(r: _Reader) -> dict[str, Any]:
    return dict(from_=r.int("from"), activation=_activation(r, "linear"))


@section_spec("scale_channels")
def _scale_channels(r: _Reader) -> dict[str, Any]:
    return dict(from_=r.int("from"), scale_wh=r.int("scale_wh", 0, lo=0, hi=1),
                activation=_activation(r, "linear"))


@section_spec("dropout")
def _dropout(r: _Reader) -> dict[str, Any]:
    return {}


@section_spec("yolo")
def _yolo(r: _Reader) -> dict[str, Any]:
    classes = r.int("classes", 20, lo=1, hi=100000)
    total = r.int("num", 1, lo=1, hi=1000)
    mask = r.ints("mask", list(range(total)))
    anchors = r.floats("anchors", None) if r.has("anchors") else None
    if anchors is None:
        raise r.s.error("required option 'anchors' is missing", "anchors")
    if len(anchors) < 2 * total:
        raise r.s.error(f"{len(anchors)} anchor values given, num={total} needs {2 * total}",
                        "anchors")
    for m in mask:
        if not 0 <= m < total:
            raise r.s.error(f"mask index {m} is outside 0..num-1 ({total - 1})", "mask")
    if r.has("map") or r.has("embedding_layer"):
        raise r.s.error("class maps / embedding layers are not supported")
    pairs = [[anchors[2 * i], anchors[2 * i + 1]] for i in range(total)]
    return dict(classes=classes, num=total, mask=mask, anchors=pairs,
                scale_x_y=r.float("scale_x_y", 1.0, lo=0.0),
                new_coords=r.int("new_coords", 0, lo=0, hi=1))


@section_spec("region")
def _region(r: _Reader) -> dict[str, Any]:
    num = r.int("num", 1, lo=1, hi=1000)
    anchors = r.floats("anchors", [0.5] * (2 * num))
    if len(anchors) < 2 * num:
        raise r.s.error(f"{len(anchors)} anchor values given, num={num} needs {2 * num}",
                        "anchors")
    if r.has("tree") or r.has("map"):
        raise r.s.error("hierarchical softmax trees / class maps are not supported")
    return dict(classes=r.int("classes", 20, lo=1, hi=100000), coords=r.int("coords", 4, lo=4, hi=4),
                num=num, softmax=r.flag("softmax", 0),
                anchors=[[anchors[2 * i], anchors[2 * i + 1]] for i in range(num)])


# --------------------------------------------------------------------------- reading

def _decode_lines(path: Path) -> list[str]:
    try:
        st = path.stat()
        size = st.st_size
    except OSError as e:
        raise CfgError(f"cannot read cfg: {e.strerror}", file=path) from None
    if not S_ISREG(st.st_mode):  # a FIFO would block the read forever
        raise CfgError("not a regular file", file=path)
    if size > MAX_CFG_BYTES:
        raise CfgError(f"file is {size} bytes; a Darknet cfg is never larger than "
                       f"{MAX_CFG_BYTES} bytes", file=path)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark (Windows editors)
        data = data[3:]
    lines = data.split(b"\n")
    out = []
    for i, raw in enumerate(lines, 1):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise CfgError("line is not valid UTF-8 text (is this really a .cfg file?)",
                           file=path, line=i) from None
    return out


def parse_cfg(path: str | Path) -> DarknetConfig:
    """Parse and validate a cfg; shape-level checks (routes, filters vs classes) follow in
    :func:`darknet2tflite.darknet.shapes.infer_shapes`, which this calls, so a returned config is
    buildable."""
    path = Path(path)
    sections: list[Section] = []
    current: Section | None = None
    for lineno, line in enumerate(_decode_lines(path), 1):
        s = line.strip().replace("\x00", "")
        if not s or s[0] in "#;":
            continue
        if s[0] == "[":
            if not s.endswith("]"):
                raise CfgError(f"malformed section header '{s}'", file=path, line=lineno)
            header = s[1:-1].strip().lower()
            kind = ALIASES.get(header)
            if kind is None:
                known = "known to Darknet but not supported here" if header in KNOWN_UNSUPPORTED \
                    else "unknown section type"
                raise CfgError(f"{known}: [{header}]", file=path, line=lineno, section=header,
                               layer=len(sections) - 1 if sections else None)
            current = Section(kind=kind, header=header, line=lineno,
                              index=len(sections) - 1, file=str(path))
            sections.append(current)
            continue
        if current is None:
            raise CfgError(f"option outside any section: '{s[:60]}'", file=path, line=lineno)
        if "=" not in s:
            raise CfgError(f"expected 'key=value', got '{s[:60]}'", file=path, line=lineno,
                           section=current.header, layer=current.index)
        key, value = s.split("=", 1)
        key = key.strip().lower()
        # inline comments: '#' or ';' (Darknet's comment characters; its atoi/atof stop there)
        value = value.split("#", 1)[0].split(";", 1)[0].strip()
        if not key:
            raise CfgError("empty option name", file=path, line=lineno, section=current.header,
                           layer=current.index)
        hidden = [c for c in key if not c.isprintable()]  # U+FEFF (BOM) included
        if hidden:
            raise CfgError(f"option name contains invisible character(s) "
                           f"{', '.join(f'U+{ord(c):04X}' for c in hidden)} (an editor's "
                           "byte-order mark or control character?)", file=path, line=lineno,
                           section=current.header, layer=current.index,
                           key=key.encode("ascii", "replace").decode())
        if key in current.options:
            raise CfgError(f"option given twice (first on line {current.options[key].line})",
                           file=path, line=lineno, section=current.header, layer=current.index,
                           key=key)
        if value == "":
            raise CfgError("option has no value", file=path, line=lineno,
                           section=current.header, layer=current.index, key=key)
        current.options[key] = Option(value, lineno)

    if not sections:
        raise CfgError("no sections found (is this a Darknet .cfg?)", file=path)
    if sections[0].kind != "net":
        raise CfgError("the first section must be [net]", file=path, line=sections[0].line,
                       section=sections[0].header)
    for s in sections[1:]:
        if s.kind == "net":
            raise s.error("[net] may only appear once, as the first section")
    if len(sections) == 1:
        raise CfgError("the cfg has no layers after [net]", file=path)

    for s in sections:
        reader = _Reader(s)
        s.params = SECTION_SPECS[s.kind](reader)
        allowed = reader.used | LAYER_TRAINING_KEYS | KIND_TRAINING_KEYS.get(s.kind, frozenset())
        if s.kind == "net":
            allowed = reader.used | NET_TRAINING_KEYS
        for key in s.options:
            if key not in allowed:
                raise s.error("unknown option for this section", key)

    cfg = DarknetConfig(path=path, net=sections[0], layers=sections[1:])
    infer_shapes(cfg)
    from darknet2tflite.bounds import check_cfg
    check_cfg(cfg)  # layers, input size, parameters (README: Limits), before anything is built
    return cfg

"""Outlier channel splitting ahead of int8 calibration.

Why: TFLite quantizes every activation tensor with one scale. In the first high-resolution
layers of YOLO models a few channels reach 3-6x the values of the median channel (yolov4-tiny
layer 0: per-channel maxima 7..40), so most channels keep only a fraction of the 256 levels,
and the attribution in docs/int8.md found those layers to carry most of the int8 objectness
error. Splitting an outlier channel c into k copies that each carry 1/k of it (producer
weights and bias divided by k, the consumer's input weights duplicated) is exact in float for
activations with f(x/k) = f(x)/k (linear, relu, leaky) and pass-through ops that commute with
the scaling (zero padding, max pooling), shrinks the tensor's range, and costs neither weight
precision (per-channel weight scales scale with the weights) nor any new op kind: only extra
channels. Cross-layer range equalization (equalize.py, ``--equalize``) is the MAC-free
alternative; it moves part of the error into the consumer's weights and measured worse on
held-out AP50 (docs/int8.md, "Range equalization").

The cost is bounded by budgets of extra multiply-accumulates and extra weights relative to
the whole model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # numpy is imported where used: the CLI and flows read MAC_BUDGET cheaply
    import numpy as np

#: a layer is split only if that cuts its estimated int8 rounding error variance to this
#: fraction or less (see copies())
MAX_ERROR_RATIO = 0.7
#: at most this many copies of one channel
MAX_COPIES = 4
#: extra multiply-accumulates allowed, as a fraction of the model's convolution MACs
MAC_BUDGET = 0.15
#: extra weights allowed, as a fraction of the model's convolution weights: deep layers cost
#: few MACs per channel but many weights, and the model file is what an embedded target stores
PARAM_BUDGET = 0.05
#: calibration images used for the channel statistics
STAT_IMAGES = 16
#: activations that commute with a positive scale: f(x / k) = f(x) / k
HOMOGENEOUS = frozenset({"linear", "relu", "leaky"})
#: a float model that differs by more than this (relative to the output range) is rejected
FLOAT_TOLERANCE = 1e-4

Progress = Callable[[str], None]


@dataclass
class Candidate:
    """A conv whose output reaches only plain convolutions through ops that commute with a
    positive per-channel scale."""
    producer: str
    consumers: list[str]
    macs_per_channel: float       # producer per output channel + consumers per input channel
    params_per_channel: float     # the same for weights


@dataclass
class SplitReport:
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_macs: float = 0.0
    model_macs: float = 0.0
    extra_params: float = 0.0
    model_params: float = 0.0
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra_mac_fraction"] = round(self.extra_macs / self.model_macs, 4) \
            if self.model_macs else 0.0
        d["extra_param_fraction"] = round(self.extra_params / self.model_params, 4) \
            if self.model_params else 0.0
        return d


# --------------------------------------------------------------------------- graph

def _parents(layer: Any) -> list[Any]:
    out = []
    for node in layer._inbound_nodes:
        for t in node.input_tensors:
            out.append(t._keras_history.operation)
    return out


def _children(model: Any) -> dict[str, list[Any]]:
    kids: dict[str, list[Any]] = {}
    for layer in model.layers:
        for p in _parents(layer):
            kids.setdefault(p.name, []).append(layer)
    return kids


def _is_plain_conv(layer: Any) -> bool:
    import keras
    return (type(layer) is keras.layers.Conv2D and layer.groups == 1
            and layer.get_config().get("activation") in ("linear", None))


def _passes_scale(layer: Any) -> bool:
    """Ops between the activation and the consumer convs that commute with x -> x / k."""
    import keras
    from darknet2tflite.model.layers import ConstantPad
    if isinstance(layer, keras.layers.MaxPooling2D):
        return True
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return True
    if isinstance(layer, ConstantPad):
        # zero padding, copies of values, or maxpool's -FLT_MAX "never the maximum"
        return layer.mode != "CONSTANT" or layer.value == 0.0 or layer.value <= -1e30
    return False


def _spatial(shape: Sequence[Any]) -> float:
    return float(shape[1] or 1) * float(shape[2] or 1)


def conv_macs(layer: Any) -> float:
    kh, kw = layer.kernel_size
    cin = layer.input.shape[-1]
    return _spatial(layer.output.shape) * kh * kw * cin / layer.groups * layer.filters


def find_candidates(model: Any) -> list[Candidate]:
    """Convs (graph order) whose output, after an optional homogeneous activation, feeds
    only plain convs, possibly through padding / max pooling. Never a model output."""
    from darknet2tflite.model.layers import DarknetActivation
    kids = _children(model)
    outputs = {t._keras_history.operation.name for t in model.outputs}
    found = []
    for layer in model.layers:
        if not _is_plain_conv(layer) or layer.name in outputs:
            continue
        frontier = kids.get(layer.name, [])
        if (len(frontier) == 1 and isinstance(frontier[0], DarknetActivation)):
            if frontier[0].kind not in HOMOGENEOUS or frontier[0].name in outputs:
                continue
            frontier = kids.get(frontier[0].name, [])
        consumers: list[Any] = []
        ok = bool(frontier)
        while frontier and ok:
            nxt = []
            for k in frontier:
                if _is_plain_conv(k) and len(_parents(k)) == 1:
                    consumers.append(k)
                elif _passes_scale(k) and k.name not in outputs and kids.get(k.name):
                    nxt.extend(kids[k.name])
                else:
                    ok = False
            frontier = nxt
        if not ok or not consumers:
            continue
        kh, kw = layer.kernel_size
        params = float(kh * kw * layer.input.shape[-1] + 1)
        per = _spatial(layer.output.shape) * (params - 1)
        for c in consumers:
            ch, cw = c.kernel_size
            per += _spatial(c.output.shape) * ch * cw * c.filters
            params += ch * cw * c.filters
        found.append(Candidate(layer.name, [c.name for c in consumers], per, params))
    return found


# --------------------------------------------------------------------------- statistics

def _outputs(model: Any, x: np.ndarray) -> list[np.ndarray]:
    """Run a single-input model eagerly (``x`` passed in the structure it was built with);
    its outputs as a list of arrays."""
    import numpy as np
    struct = getattr(model, "_inputs_struct", None)
    y = model([x] if isinstance(struct, (list, tuple)) else x, training=False)
    return [np.asarray(o) for o in (y if isinstance(y, (list, tuple)) else [y])]


#: photos per eager call of the statistics model: one call per photo spends as much in
#: dispatch as in the convolutions (yolov4-tiny, 16 photos: 1.5 s one by one, 0.95 s by 8,
#: the same maxima bit for bit)
BATCH = 8


def channel_maxima(model: Any, names: Sequence[str], images: np.ndarray) -> list[np.ndarray]:
    """Per-channel max |conv output| (pre-activation: both signs are quantized there)."""
    import numpy as np
    import keras
    sub = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    acc: list[np.ndarray | None] = [None] * len(names)
    for i in range(0, len(images), BATCH):
        for j, o in enumerate(_outputs(sub, images[i:i + BATCH].astype(np.float32))):
            m = np.abs(o).reshape(-1, o.shape[-1]).max(axis=0)
            acc[j] = m if acc[j] is None else np.maximum(acc[j], m)
    return [a if a is not None else np.zeros(0) for a in acc]


def copies(maxima: np.ndarray, max_copies: int = MAX_COPIES,
           max_extra: float = float("inf")) -> tuple[np.ndarray, float, float]:
    """(copies per channel, threshold T, error ratio) minimizing the layer's int8 rounding
    error, with at most ``max_extra`` added channels.

    Copies of a channel are identical tensors, so they round identically: the consumer's
    sum of k copies carries k times one copy's rounding error. With the tensor's range
    brought from M down to T, a channel's absolute error scales with k_c * T, so the layer's
    error variance relative to no split is  T^2 * sum(k_c^2) / (C * M^2). Splitting pays
    only when a few channels stand far above the rest; with maxima all alike (ratio >= 1)
    it would make the int8 model worse, so it is not done."""
    import numpy as np
    m = np.asarray(maxima, dtype=np.float64)
    top = float(m.max()) if len(m) else 0.0
    none = (np.ones(len(m), dtype=int), top, 1.0)
    if not top > 0:
        return none
    best = none
    cands = {top / j for j in range(1, max_copies + 1)}
    cands |= {float(v) / j for v in m for j in range(1, max_copies + 1)}
    for t in sorted(c for c in cands if top / max_copies <= c < top):
        k = np.maximum(np.ceil(m / t - 1e-9), 1).astype(int)
        if k.max() > max_copies or (k - 1).sum() > max_extra:
            continue
        ratio = t * t * float((k * k).sum()) / (len(m) * top * top)
        if ratio < best[2]:
            best = (k, t, ratio)
    return best


# --------------------------------------------------------------------------- rewrite

def apply_split(model: Any, plan: dict[str, tuple[np.ndarray, list[str]]]) -> Any:
    """A copy of ``model`` with producer channel c replaced by copies[c] copies of 1/copies[c]
    of it, and every consumer's input weights duplicated to match. Exact in float."""
    import numpy as np
    import keras
    new_filters = {p: int(k.sum()) for p, (k, _) in plan.items()}

    def clone(layer: Any) -> Any:
        cfg = layer.get_config()
        if layer.name in new_filters:
            cfg["filters"] = new_filters[layer.name]
        return layer.__class__.from_config(cfg)

    new = keras.models.clone_model(model, clone_function=clone)
    weights = {l.name: l.get_weights() for l in model.layers if l.weights}
    for p, (k, consumers) in plan.items():
        src = np.repeat(np.arange(len(k)), k)
        div = k[src].astype(np.float32)
        w = weights[p]
        weights[p] = [w[0][..., src] / div] + ([w[1][src] / div] if len(w) > 1 else [])
        for c in consumers:
            cw = weights[c]
            weights[c] = [cw[0][:, :, src, :]] + cw[1:]
    for name, w in weights.items():
        new.get_layer(name).set_weights(w)
    return new


def _max_rel_diff(a: Any, b: Any, images: np.ndarray) -> float:
    import numpy as np
    worst = 0.0
    for u, v in zip(_outputs(a, images), _outputs(b, images)):
        worst = max(worst, float(np.abs(u - v).max() / max(np.abs(u).max(), 1e-6)))
    return worst


def split_outlier_channels(model: Any, images: np.ndarray, budget: float = MAC_BUDGET,
                           max_copies: int = MAX_COPIES, param_budget: float = PARAM_BUDGET,
                           progress: Progress | None = None) -> tuple[Any, SplitReport]:
    """(model with outlier channels split, report). Candidates are taken in graph order,
    the high-resolution layers first, while the extra MACs stay within ``budget`` and the
    extra weights within ``param_budget``; the
    result is checked against the original in float and discarded if it differs."""
    import numpy as np
    say = progress or (lambda _m: None)
    report = SplitReport()
    convs = [l for l in model.layers if hasattr(l, "kernel_size") and hasattr(l, "filters")]
    report.model_macs = float(sum(conv_macs(l) for l in convs))
    report.model_params = float(sum(sum(int(np.prod(w.shape)) for w in l.weights)
                                    for l in convs))
    cands = find_candidates(model)
    if not cands or budget <= 0 or len(images) == 0:
        report.skipped = "no candidate layers" if not cands else "disabled"
        return model, report
    x = np.asarray(images[:STAT_IMAGES], dtype=np.float32)
    maxima = channel_maxima(model, [c.producer for c in cands], x)
    plan: dict[str, tuple[np.ndarray, list[str]]] = {}
    for cand, m in zip(cands, maxima):
        room = min(
            (budget * report.model_macs - report.extra_macs) / cand.macs_per_channel,
            (param_budget * report.model_params - report.extra_params) / cand.params_per_channel)
        k, t, ratio = copies(m, max_copies, max_extra=room)
        if not ratio <= MAX_ERROR_RATIO:
            continue
        plan[cand.producer] = (k, cand.consumers)
        report.extra_macs += float((k - 1).sum()) * cand.macs_per_channel
        report.extra_params += float((k - 1).sum()) * cand.params_per_channel
        report.layers[cand.producer] = {
            "channels": [int(len(k)), int(k.sum())], "threshold": round(t, 3),
            "max": round(float(m.max()), 3), "error_ratio": round(ratio, 3),
            "copies": {int(c): int(n) for c, n in enumerate(k) if n > 1},
            "consumers": list(cand.consumers)}
    if not plan:
        report.skipped = "no layer gains within the budget"
        return model, report
    new = apply_split(model, plan)
    diff = _max_rel_diff(model, new, x[:2])
    if not diff <= FLOAT_TOLERANCE:  # never ship a changed float function
        report.skipped = f"split model differs in float (relative {diff:.2e})"
        report.layers, report.extra_macs, report.extra_params = {}, 0.0, 0.0
        say(f"int8: channel split {report.skipped}; not applied")
        return model, report
    say(f"int8: split outlier channels of {len(plan)} layer(s) ({describe(report.to_dict())})")
    return new, report


def describe(report: dict[str, Any]) -> str:
    """One line for logs and report.md, from ``SplitReport.to_dict()`` (also as read back
    from report.json)."""
    if not report.get("layers"):
        return f"none ({report.get('skipped')})"
    what = ", ".join(f"{p} {v['channels'][0]}->{v['channels'][1]}"
                     for p, v in report["layers"].items())
    return f"{what}, +{100 * report.get('extra_mac_fraction', 0):.1f} % MACs"

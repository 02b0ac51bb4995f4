"""Which Darknet layer a TFLite tensor belongs to (tensor names carry the layer index)."""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence


from darknet2tflite.int8.ranges import calibrated_ranges


# --------------------------------------------------------------------------- layer names

_LAYER_RE = re.compile(r"(?:^|/)L(\d{3,})_")


def layer_of_tensor(name: str, output_layers: Mapping[str, int] | None = None) -> int | None:
    """Darknet layer index of a TFLite tensor name: Keras layer names are ``L###_...`` and
    survive in TFLite tensor names; head outputs are mapped via ``output_layers``."""
    m = _LAYER_RE.search(name)
    if m:
        return int(m.group(1))
    if output_layers:
        for prefix, idx in output_layers.items():
            if name == prefix or name.startswith(prefix):
                return idx
    return None


def output_layer_map(meta: Mapping[str, Any], head_outputs: Sequence[Sequence[str]]
                     ) -> dict[str, int]:
    """TFLite output tensor name -> Darknet index of the conv that computes it."""
    out = {}
    for h, names in zip(meta["heads"], head_outputs):
        src = h.get("input_layer", h["index"] - 1)
        for n in names:
            out[n] = int(src)
    return out


def layer_tensors(calibrated: bytes, layers: Iterable[int],
                  output_layers: Mapping[str, int]) -> list[str]:
    """Names of the op-output tensors belonging to Darknet ``layers`` (denylist input)."""
    want = set(layers)
    names = []
    for name in calibrated_ranges(calibrated):
        idx = layer_of_tensor(name, output_layers)
        if idx is not None and idx in want:
            names.append(name)
    return names

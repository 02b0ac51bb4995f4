"""The one place the library opens a .tflite model in LiteRT.

Which kernels run it is the caller's choice, not a detail: XNNPACK (LiteRT's default) rounds
int8 differently from the reference kernels that TFLite Micro and the NPUs follow, and a
delegate replaces the ops it claims by one opaque node, which an op inspection must not see.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

#: kernels -> LiteRT op resolver (None: the default, builtin kernels + XNNPACK delegate)
KERNELS = {
    "xnnpack": None,
    "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",  # every op visible, no delegate
    "reference": "BUILTIN_REF",  # the integer arithmetic TFLite Micro and Vela match
}


def interpreter(model: str | Path | bytes, threads: int | None = 1, kernels: str = "xnnpack",
                preserve_all_tensors: bool = False) -> Any:
    """An allocated LiteRT interpreter over ``model`` (a path or the file's bytes);
    ``threads`` None leaves LiteRT's default, ``preserve_all_tensors`` keeps intermediate
    tensors readable after ``invoke`` (with XNNPACK too: the calibration passes read their
    float activation ranges that way, and the shipped models were calibrated with them)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    if kernels not in KERNELS:
        raise ValueError(f"kernels: one of {', '.join(KERNELS)}, not {kernels!r}")
    kw: dict[str, Any] = ({"model_content": bytes(model)} if isinstance(model, (bytes, bytearray))
                          else {"model_path": str(model)})
    if KERNELS[kernels] is not None:
        kw["experimental_op_resolver_type"] = getattr(OpResolverType, KERNELS[kernels])
    if preserve_all_tensors:
        kw["experimental_preserve_all_tensors"] = True
    with warnings.catch_warnings():  # LiteRT warns about its own deprecations on construction
        warnings.simplefilter("ignore")
        it = Interpreter(**kw) if threads is None else Interpreter(num_threads=threads, **kw)
    it.allocate_tensors()
    return it

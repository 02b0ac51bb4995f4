"""``tflm``: TensorFlow Lite for Microcontrollers, run for real in its Python interpreter
(``tflite-micro`` package: the same C++ kernels and allocator a microcontroller build
links).

The probe loads each layer's tiny int8 model into the interpreter (a missing kernel or a
kernel refusing int8 at Prepare fails there, with the reason on stderr); verify runs the
final model on real images, compares every output element with LiteRT's reference kernels
(TFLite Micro implements the same integer arithmetic: expected 0 steps) and finds the
smallest tensor arena that still allocates (by bisection: what a firmware must reserve)."""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from . import LayerVerdict, TargetKind, register, tool_version
from ._runtime import captured_stderr, first_reason, step_difference

#: arena granularity of the bisection (TFLM aligns allocations to 16 bytes)
ARENA_STEP = 16
PROBE_ARENA = 8 << 20
MAX_ARENA = 4 << 30


def _micro_interpreter(model: bytes, arena: int) -> Any:
    from tflite_micro.python.tflite_micro import runtime
    return runtime.Interpreter.from_bytes(bytes(model), arena_size=int(arena))


def load(model: bytes, arena: int) -> tuple[Any | None, str]:
    """(interpreter, "") or (None, why TFLite Micro refused the model)."""
    with captured_stderr() as lines:
        try:
            return _micro_interpreter(model, arena), ""
        except (RuntimeError, ValueError) as e:
            err = e
    return None, first_reason(lines, str(err))


def smallest_arena(model: bytes, upper: int) -> int:
    """The smallest arena (bytes, multiple of ARENA_STEP) in which the model allocates;
    ``upper`` must allocate."""
    lo, hi = 0, upper  # lo fails (or is 0), hi works
    while hi - lo > ARENA_STEP:
        mid = (lo + hi) // 2 // ARENA_STEP * ARENA_STEP
        if mid <= lo:
            break
        with captured_stderr():
            try:
                _micro_interpreter(model, mid)
                hi = mid
            except RuntimeError:
                lo = mid
    return hi


def run(it: Any, inputs: Sequence[np.ndarray], n_outputs: int) -> list[list[np.ndarray]]:
    res = []
    for x in inputs:
        it.set_input(x, 0)
        it.invoke()
        res.append([np.array(it.get_output(k)) for k in range(n_outputs)])
    return res


def _short_of_memory(why: str) -> bool:
    return any(w in why for w in ("Failed to resize buffer", "Failed to allocate",
                                  "Unable to allocate"))


def _n_outputs(model: bytes) -> int:
    from darknet2tflite.tflite.interpreter import interpreter
    return len(interpreter(model, threads=None, kernels="reference").get_output_details())


def first_divergence(model: bytes, x: np.ndarray, arena: int) -> dict[str, Any] | None:
    """The first op (execution order) whose output differs between TFLite Micro and the
    reference kernels on input ``x``, with every earlier tensor identical: so its step
    difference is the two kernels' own rounding disagreement, not an inherited one (later
    layers then amplify it, which is what the end-to-end figure shows)."""
    from tflite_micro.python.tflite_micro import runtime

    from darknet2tflite.tflite.interpreter import interpreter
    from darknet2tflite.tflite.names import layer_of_tensor
    ref = interpreter(model, threads=None, kernels="reference", preserve_all_tensors=True)
    ref.set_tensor(ref.get_input_details()[0]["index"], x)
    ref.invoke()
    with captured_stderr():
        try:
            micro = runtime.Interpreter.from_bytes(
                bytes(model), arena_size=int(arena),
                intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
            micro.set_input(x, 0)
            micro.invoke()
        except RuntimeError:
            return None
    names = {t["index"]: t["name"] for t in ref.get_tensor_details()}
    for od in ref._get_ops_details():
        for o in (int(i) for i in od["outputs"] if i >= 0):
            a = ref.get_tensor(o)
            g = micro.GetTensor(o, 0)
            b = np.asarray(g["tensor_data"]).reshape(a.shape)
            d = np.abs(a.astype(np.int64) - b.astype(np.int64))
            if d.max() > 0:
                return {"op": od["op_name"], "op_index": int(od["index"]), "tensor": names[o],
                        "layer": layer_of_tensor(names[o]), "max_step_difference": int(d.max()),
                        "fraction_differing": round(float(np.count_nonzero(d)) / d.size, 6)}
    return None


class TflmTarget:
    name = "tflm"
    profile = "tflm"
    arithmetic = "reference"

    def tool(self) -> dict[str, str]:
        return {"name": "tflite-micro", "version": tool_version("tflite-micro")}

    def probe_layer(self, model: bytes) -> LayerVerdict:
        it, why = load(model, max(PROBE_ARENA, 10 * len(model)))
        if it is None:
            return LayerVerdict(False, f"TFLite Micro refuses it: {why}")
        details = it.get_input_details(0)
        rng = np.random.default_rng(0)
        info = np.iinfo(details["dtype"]) if details["dtype"] != np.float32 else None
        x = (rng.integers(info.min, info.max + 1, details["shape"]).astype(details["dtype"])
             if info else rng.normal(size=details["shape"]).astype(np.float32))
        with captured_stderr() as lines:
            try:
                it.set_input(x, 0)
                it.invoke()
            except RuntimeError as e:
                return LayerVerdict(False, "TFLite Micro invoke failed: "
                                    + first_reason(lines, str(e)))
        return LayerVerdict(True)

    def verify(self, model: bytes, inputs: Sequence[np.ndarray], out_dir: Any,
               reference: Sequence[Sequence[np.ndarray]] | None) -> dict[str, Any]:
        upper = max(PROBE_ARENA, 4 * len(model))
        it, why = load(model, upper)
        while it is None and _short_of_memory(why) and upper < MAX_ARENA:
            upper *= 2  # big feature maps: find an arena that works before bisecting
            it, why = load(model, upper)
        if it is None:
            return {"runs": False, "reason": f"TFLite Micro refuses the model: {why}"}
        t0 = time.perf_counter()
        arena = smallest_arena(model, upper)
        t_arena = time.perf_counter() - t0
        it, why = load(model, arena)
        if it is None:  # pragma: no cover - bisection just allocated it
            return {"runs": False, "reason": why}
        t0 = time.perf_counter()
        with captured_stderr() as lines:
            try:
                got = run(it, inputs, _n_outputs(model))
            except RuntimeError as e:
                return {"runs": False, "reason": "TFLite Micro invoke failed: "
                        + first_reason(lines, str(e))}
        t_run = time.perf_counter() - t0
        doc: dict[str, Any] = {"runs": True, "arena_bytes": arena, "images": len(inputs),
                               "seconds_per_image": round(t_run / max(1, len(inputs)), 3),
                               "seconds_arena_search": round(t_arena, 2)}
        if reference is not None:
            worst, frac = step_difference(got, reference)
            doc.update(max_step_difference=worst, fraction_differing=round(frac, 6),
                       compared_with="LiteRT reference kernels (BUILTIN_REF)")
            if worst:
                k = next(i for i, (g, r) in enumerate(zip(got, reference))
                         if step_difference([g], [r])[0])
                doc["first_divergence"] = first_divergence(model, inputs[k],
                                                           max(upper, 8 * arena))
        return doc


register(TargetKind("tflm", names=lambda: ["tflm"], make=lambda n: TflmTarget(),
                    claims=lambda n: n == "tflm"))

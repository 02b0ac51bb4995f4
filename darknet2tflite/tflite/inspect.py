"""What a TFLite flatbuffer contains: ops with their tensor dtypes, float ops, oversized quantization scales."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from darknet2tflite.errors import UserError
from darknet2tflite.tflite.flatbuffer import _op_names, _tname, _to_obj, _type_names
from darknet2tflite.tflite.interpreter import interpreter


# --------------------------------------------------------------------------- flatbuffer
FLOAT_DTYPES = ("float32", "float16", "float64")
#: the int8 model's uint8 input: raw pixels, scale 1/255, zero point 0
INPUT_SCALE = np.float32(1.0 / 255.0)


@dataclass
class OpInfo:
    name: str
    inputs: list[str]     # dtype names ("int8", "float32", ...); constants included
    outputs: list[str]


@dataclass
class TFLiteSummary:
    """What a converted flatbuffer contains, as far as target support is concerned."""

    ops: list[OpInfo]
    float_ops: list[str]       # ops computing on float tensors, excluding I/O-edge (de)quant
    edge_ops: list[str]        # QUANTIZE at an input / DEQUANTIZE at an output
    large_scales: list[dict]   # tensors whose int8 scale exceeds the profile limit
    dead_outputs: list[str]    # ops with outputs nothing reads (e.g. SPLIT keeping 1 group)
    input_dtypes: list[str]
    output_dtypes: list[str]

    @property
    def op_names(self) -> list[str]:
        return [o.name for o in self.ops]


def inspect_tflite(data: bytes, max_quant_scale: float | None = None) -> TFLiteSummary:
    """Op list with tensor dtypes, float ops and oversized quantization scales.

    An op counts as a float op if any of its input or output tensors is floating point,
    except a QUANTIZE reading a model input or a DEQUANTIZE writing a model output (the
    optional I/O edges of a full-integer model)."""
    it = interpreter(data, threads=None, kernels="builtin")  # every op visible
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    inputs = {d["index"] for d in it.get_input_details()}
    outputs = {d["index"] for d in it.get_output_details()}
    produced: set[int] = set()
    consumed: set[int] = set()
    details = it._get_ops_details()
    for od in details:
        consumed.update(int(i) for i in od["inputs"] if i >= 0)
    ops, float_ops, edge_ops, dead = [], [], [], []
    for od in details:
        ins = [int(i) for i in od["inputs"] if i >= 0]
        outs = [int(i) for i in od["outputs"] if i >= 0]
        produced.update(outs)
        dt_in = [np.dtype(tensors[i]["dtype"]).name for i in ins]
        dt_out = [np.dtype(tensors[i]["dtype"]).name for i in outs]
        name = od["op_name"]
        ops.append(OpInfo(name, dt_in, dt_out))
        if any(o not in consumed and o not in outputs for o in outs):
            dead.append(name)
        if not any(d in FLOAT_DTYPES for d in dt_in + dt_out):
            continue
        if (name == "QUANTIZE" and set(ins) <= inputs) or \
                (name == "DEQUANTIZE" and set(outs) <= outputs):
            edge_ops.append(name)
        else:
            float_ops.append(name)
    readers: dict[int, str] = {}
    for od in details:
        for i in od["inputs"]:
            readers.setdefault(int(i), od["op_name"])
    large = []
    if max_quant_scale is not None:
        for idx, t in sorted(tensors.items()):
            scale = t["quantization"][0]
            if not scale or scale <= max_quant_scale:
                continue
            value = None
            if idx not in produced and idx not in inputs:  # a constant: recover its value
                try:
                    q = it.get_tensor(idx).astype(np.float64).ravel()
                    v = (q - t["quantization"][1]) * scale
                    value = float(v[np.argmax(np.abs(v))])
                except ValueError:
                    pass
            large.append({"tensor": t["name"], "scale": float(scale), "value": value,
                          "read_by": readers.get(idx)})
        large.sort(key=lambda d: d["value"] is None)  # constants (the cause) first
    return TFLiteSummary(
        ops=ops, float_ops=float_ops, edge_ops=edge_ops, large_scales=large, dead_outputs=dead,
        input_dtypes=[np.dtype(tensors[i]["dtype"]).name for i in sorted(inputs)],
        output_dtypes=[np.dtype(tensors[i]["dtype"]).name for i in sorted(outputs)])


class NotFullyIntegerError(UserError):
    """The int8 model still contains float computation (an op the converter could not
    quantize); names the ops so a rewrite rule can be written for them."""


# --------------------------------------------------------------------------- checks

_INTEGER_TYPES = {"INT8", "UINT8", "INT16", "INT32", "INT64", "BOOL"}


def inspect_ops(data: bytes) -> list[dict[str, Any]]:
    """Every operator with its input/output tensor types (delegate-free flatbuffer view)."""
    m = _to_obj(data)
    g = m.subgraphs[0]
    names, types = _op_names(), _type_names()
    ops = []
    for i, op in enumerate(g.operators):
        code = m.operatorCodes[op.opcodeIndex]
        ops.append({
            "index": i,
            "op": names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM"),
            "inputs": [(_tname(g.tensors[t]), types[g.tensors[t].type]) for t in op.inputs
                       if t >= 0],
            "outputs": [(_tname(g.tensors[t]), types[g.tensors[t].type]) for t in op.outputs],
        })
    return ops


def input_quantization(data: bytes) -> tuple[str, float, int]:
    """(dtype, scale, zero point) of the model input."""
    m = _to_obj(data)
    g = m.subgraphs[0]
    t = g.tensors[g.inputs[0]]
    q = t.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
    zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    return _type_names()[t.type], scale, zp


def check_integer(data: bytes, input_type: str = "uint8",
                  allow_float_layers: Iterable[str] = ()) -> dict[str, Any]:
    """Fail unless every operator computes on integer tensors only, the input is
    ``input_type`` with scale exactly 1/255 (zero point 0 for uint8, -128 for int8) and
    every output is int8. ``allow_float_layers``: tensor-name fragments of layers kept float
    on purpose (float fallback); their ops are reported but allowed."""
    allow = list(allow_float_layers)
    ops = inspect_ops(data)
    float_ops, allowed = [], []
    for op in ops:
        tensors = op["inputs"] + op["outputs"]
        if op["op"] == "DEQUANTIZE" or any(t not in _INTEGER_TYPES for _, t in tensors):
            desc = f"{op['op']}({', '.join(n for n, _ in op['outputs'])})"
            if allow and (op["op"] in ("DEQUANTIZE", "QUANTIZE") or any(
                    a in n for a in allow for n, _ in tensors)):
                allowed.append(desc)
            else:
                float_ops.append(desc)
    m = _to_obj(data)
    g = m.subgraphs[0]
    types = _type_names()
    out_types = sorted({types[g.tensors[t].type] for t in g.outputs})
    dtype, scale, zp = input_quantization(data)
    want_zp = 0 if input_type == "uint8" else -128
    problems = []
    if float_ops:
        problems.append(f"float computation in the int8 model: {', '.join(float_ops[:8])}"
                        + (" ..." if len(float_ops) > 8 else ""))
    if not allow:
        if dtype != input_type.upper():
            problems.append(f"input is {dtype}, expected {input_type.upper()}")
        elif np.float32(scale) != INPUT_SCALE or zp != want_zp:
            problems.append(f"input quantization is scale {scale!r} zero point {zp}, expected "
                            f"1/255 and {want_zp}")
        if out_types != ["INT8"]:
            problems.append(f"outputs are {out_types}, expected INT8")
    if problems:
        raise NotFullyIntegerError("; ".join(problems))
    counts: dict[str, int] = {}
    for op in ops:
        counts[op["op"]] = counts.get(op["op"], 0) + 1
    return {"full_integer": not allowed, "ops": counts, "float_ops_allowed": allowed,
            "input": {"dtype": dtype.lower(), "scale": scale, "zero_point": zp},
            "outputs": out_types[0].lower() if len(out_types) == 1 else out_types}


def float_ops(data: bytes) -> list[str]:
    """Ops computing on float tensors (excluding QUANTIZE of a model input / DEQUANTIZE of a
    model output), counted the same way for every backend."""
    return list(inspect_tflite(data).float_ops)

"""Keras -> TFLite, and running .tflite files with outputs in the contract's head order.

TFLite does not promise to keep the Keras output order, so every consumer asks
:func:`run_tflite` for heads by the output names recorded in model.json.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import tensorflow as tf
import keras

from darknet2tflite.store.atomic import atomic_write_bytes
from darknet2tflite.darknet.metadata import embed_tflite_metadata


def convert(model: keras.Model, *, int8: bool = False,
            representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
            input_type: Any = tf.uint8, output_type: Any = tf.int8,
            mode: str = "float32") -> bytes:
    """One place that configures TFLiteConverter. ``mode``: float32, float16, dynamic,
    int8 (full integer, TFLITE_BUILTINS_INT8) or int16x8."""
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode in ("int8", "int16x8"):
        if representative is None:
            raise ValueError("full-integer conversion needs representative data")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        if mode == "int8":
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        else:
            conv.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
            input_type, output_type = tf.int16, tf.int16
        conv.inference_input_type = input_type
        conv.inference_output_type = output_type
    elif mode != "float32":
        raise ValueError(f"unknown conversion mode {mode!r}")
    return conv.convert()


def save_tflite(data: bytes, path: str | Path, meta: dict | None = None) -> Path:
    if meta is not None:
        data = embed_tflite_metadata(data, meta)
    atomic_write_bytes(path, data)
    return Path(path)


def output_names(it: Any) -> dict[str, int]:
    """Signature output name (= Keras output layer name) -> output tensor index."""
    sigs = it._get_full_signature_list()
    if sigs:
        sig = next(iter(sigs.values()))
        return dict(sig["outputs"])
    return {d["name"]: d["index"] for d in it.get_output_details()}


def head_groups(model: keras.Model, meta: dict) -> list[list[str]]:
    """Keras output names per head in concatenation order: a head's outputs are named
    ``head_NNN_kind`` (unsplit) or ``head_NNN_kind_<part>`` (split), emitted in order."""
    names = list(model.output_names)
    groups = []
    for h in meta["heads"]:
        base = h["output"]
        g = [n for n in names if n == base or n.startswith(base + "_")]
        if not g:
            raise ValueError(f"model has no output for head {base}")
        groups.append(g)
    return groups


def head_tensor_names(it: Any, keras_outputs: list[str],
                      wanted: list[str]) -> list[str]:
    """TFLite output tensor names of the Keras outputs ``wanted``.

    The converter names signature outputs after the Keras layer in some versions and
    ``output_<position>`` in others, and the interpreter's output list is not in Keras
    order, so resolve through the signature either way."""
    by_index = {d["index"]: d["name"] for d in it.get_output_details()}
    names = output_names(it)
    out = []
    for k in wanted:
        key = k if k in names else f"output_{keras_outputs.index(k)}"
        out.append(by_index[names[key]])
    return out


def run_tflite(it: Any, batch: np.ndarray, meta: dict) -> list[np.ndarray]:
    """Run one image at a time (models are batch 1); ``batch`` is float32 NHWC in [0,1].
    Quantized inputs/outputs are (de)quantized here; heads come back float32 in cfg order,
    concatenated from split outputs when model.json has ``head_outputs``."""
    inp = it.get_input_details()[0]
    outs = {d["name"]: d for d in it.get_output_details()}
    order = meta.get("head_outputs") or [[h.get("tflite_output", h["output"])]
                                         for h in meta["heads"]]
    if not all(n in outs for group in order for n in group):
        raise ValueError("model.json output names do not match this .tflite file's outputs")
    results: list[list[np.ndarray]] = [[] for _ in order]
    for img in batch:
        x = img[None]
        if inp["dtype"] != np.float32:
            scale, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zp), info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], x)
        it.invoke()
        for k, group in enumerate(order):
            parts = []
            for name in group:
                d = outs[name]
                y = it.get_tensor(d["index"])
                if d["dtype"] != np.float32:
                    scale, zp = d["quantization"]
                    y = (y.astype(np.float32) - zp) * scale
                parts.append(y)
            results[k].append(np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0])
    return [np.concatenate(r, axis=0) for r in results]

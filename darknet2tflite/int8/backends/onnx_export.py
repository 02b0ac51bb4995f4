"""Keras -> ONNX (tf2onnx) in the contract's NHWC layout, ONNX Runtime heads, ONNX-vs-Keras parity."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from darknet2tflite.model.load import load_keras
from darknet2tflite.store.atomic import atomic_write_bytes
from darknet2tflite.reference.parity import compare_heads

ONNX_MIN_OPSET = 13
LAYOUT_KEY = "darknet2tflite.layout"


def _dims(value_info) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def onnx_io(onnx_path: str | Path) -> dict:
    """Input/output names and shapes and the layout of an ONNX file (weights not loaded)."""
    import onnx
    m = onnx.load(str(onnx_path), load_external_data=False)
    inputs = [(i.name, _dims(i)) for i in m.graph.input]
    outputs = [(o.name, _dims(o)) for o in m.graph.output]
    props = {p.key: p.value for p in m.metadata_props}
    layout = props.get(LAYOUT_KEY)
    if layout is None:  # not written by us: the usual image-input heuristic
        shape = inputs[0][1]
        layout = "NCHW" if len(shape) == 4 and shape[1] in (1, 3, 4) and \
            shape[-1] not in (1, 3, 4) else "NHWC"
    return {"inputs": inputs, "outputs": outputs, "layout": layout,
            "opset": max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
                         default=0)}


def _to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def _keras_heads(model, batch: np.ndarray) -> dict[str, np.ndarray]:
    out = model.predict(batch, batch_size=1, verbose=0)
    out = out if isinstance(out, (list, tuple)) else [out]
    return dict(zip(model.output_names, (np.asarray(o) for o in out)))


def onnx_heads(onnx_path: str | Path, batch: np.ndarray, threads: int = 1
               ) -> dict[str, np.ndarray]:
    """onnxruntime outputs (NHWC, whatever the file's layout) by output name; one image at a
    time because the exported models are batch 1 like the TFLite ones."""
    import onnxruntime as ort
    io_ = onnx_io(onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = io_["inputs"][0][0]
    nchw = io_["layout"] == "NCHW"
    outs: dict[str, list[np.ndarray]] = {o: [] for o, _ in io_["outputs"]}
    for img in batch.astype(np.float32):
        x = img[None].transpose(0, 3, 1, 2) if nchw else img[None]
        for (o, _), y in zip(io_["outputs"], sess.run(None, {name: x})):
            outs[o].append(_to_nhwc(y) if nchw else y)
    return {k: np.concatenate(v) for k, v in outs.items()}


# --------------------------------------------------------------------------- ONNX export

def export_onnx(keras_model_or_path: Any, out_path: str | Path, opset: int = 17,
                layout: str = "NHWC") -> Path:
    """Export the float Keras model to ONNX with tf2onnx, keeping the I/O contract's names.

    tf2onnx's ``from_keras`` needs tf.keras (Keras 2) internals, so the Keras 3 model is
    traced through a ``tf.function`` returning ``{output name: tensor}``; tf2onnx names the
    ONNX outputs after those keys and the input after the TensorSpec, which keeps "image"
    and head_XXX_yolo. ``layout="NCHW"`` asks tf2onnx to transpose input and outputs (and
    then optimizes the transposes away) for NCHW-only consumers. The layout is recorded in
    the ONNX metadata so readers need not guess it from shapes.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    if opset < ONNX_MIN_OPSET:
        raise ValueError(f"opset {opset} < {ONNX_MIN_OPSET}: tf2onnx needs >= 13 for the "
                         f"Split/Slice/Resize forms these models use")
    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"layout must be NHWC or NCHW, not {layout!r}")
    model = load_keras(keras_model_or_path)
    in_name = model.inputs[0].name
    names = list(model.output_names)
    shape = tuple(model.inputs[0].shape)
    if shape[0] is None:
        shape = (1,) + shape[1:]

    @tf.function
    def serve(image):
        out = model(image, training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        return {n: o for n, o in zip(names, out)}

    kw: dict[str, Any] = {}
    if layout == "NCHW":
        kw = {"inputs_as_nchw": [in_name], "outputs_as_nchw": names}
    proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=[tf.TensorSpec(shape, tf.float32, name=in_name)],
        opset=opset, **kw)
    # from_function converts with continue_on_error: an op without an ONNX mapping stays a
    # TF op that no ONNX runtime can execute. Refuse that here, naming the ops.
    foreign = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in proto.graph.node
                      if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise ValueError(f"tf2onnx left non-ONNX ops in the graph: {', '.join(foreign)}")
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != [in_name] or got_out != names:
        raise ValueError(f"ONNX I/O names {got_in} -> {got_out} differ from the Keras model's "
                         f"{[in_name]} -> {names}")
    prop = proto.metadata_props.add()
    prop.key, prop.value = LAYOUT_KEY, layout
    onnx.checker.check_model(proto)
    out = Path(out_path)
    atomic_write_bytes(out, proto.SerializeToString())
    return out


def onnx_parity(onnx_path: str | Path, keras_model: Any, batch: np.ndarray) -> list[dict]:
    """Per-head max abs / max rel (parity.compare_heads) of onnxruntime against Keras.

    Rows follow the Keras output order (= cfg order); the target is max_rel <= 1e-5."""
    model = load_keras(keras_model)
    ref = _keras_heads(model, batch)
    got = onnx_heads(onnx_path, batch)
    names = list(model.output_names)
    missing = [n for n in names if n not in got]
    if missing:
        raise ValueError(f"ONNX file lacks outputs {missing}")
    rows = compare_heads([ref[n] for n in names], [got[n] for n in names])
    return [{**r.as_dict(), "output": n} for r, n in zip(rows, names)]

"""Per-layer int8 error from TensorFlow's QuantizationDebugger, named by Darknet layer."""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

#: the pass's name in quantize.json / report.json ``passes``
DEBUG_PASS = "QuantizationDebugger per-layer error"
#: the quantize stage's files for it: the calibrated float model the int8 one was quantized
#: from, and the photos to debug on
CALIBRATED_FILE = "model.calibrated.tflite"
IMAGES_FILE = "debug_images.npy"


# --------------------------------------------------------------------------- debugger

def layer_errors(calibrated: bytes, images: np.ndarray, output_layers: Mapping[str, int],
                 ) -> list[dict[str, Any]]:
    """Per-layer int8 error from tf.lite.experimental.QuantizationDebugger, worst first.

    The debug model (NumericVerify ops after each quantized op, fed the quantized input
    of that op) isolates each layer's own error. Ranked by RMSE / scale, the metric of
    TensorFlow's debugger guide (0.29 = pure rounding; larger = the range or the op
    hurts), and named by Darknet layer index."""
    import tensorflow as tf
    from darknet2tflite.tflite.names import layer_of_tensor
    from darknet2tflite.int8.ranges import quantize_calibrated
    debug_model = quantize_calibrated(calibrated, debug=True)

    def gen():
        for i in range(len(images)):
            yield [np.ascontiguousarray(images[i:i + 1], dtype=np.float32)]
    dbg = tf.lite.experimental.QuantizationDebugger(quant_debug_model_content=debug_model,
                                                    debug_dataset=gen)
    dbg.run()
    buf = io.StringIO()
    dbg.layer_statistics_dump(buf)
    rows = []
    for r in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(r["scale"])
        mse = float(r["mean_squared_error"])
        name = r["tensor_name"]
        rows.append({
            "layer": layer_of_tensor(name, output_layers), "tensor": name,
            "op": r["op_name"], "rmse_over_scale": round(math.sqrt(mse) / scale, 4)
            if scale > 0 else None,
            "rmse": math.sqrt(mse), "max_abs_error": float(r["max_abs_error"]),
            "scale": scale, "range": round(255 * scale, 4)})
    rows.sort(key=lambda r: -(r["rmse_over_scale"] or 0))
    return rows


# --------------------------------------------------------------------------- across stages

def save_debug_inputs(calibrated: bytes, images: np.ndarray, output_layers: Mapping[str, int],
                      out: str | Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write what :func:`run_saved` needs into ``out``: ({artifact: path}, the record for
    quantize.json ``debugger``).

    Why: the table ranks the shipped model's layers for the report; nothing in the model
    depends on it, and it costs as much as a pass over all the photos (bench: 2.7 s for
    yolov4-tiny's 8, 48 s for yolov4's), which would otherwise sit between the parse and
    the delivered int8 model. The quantize stage leaves it to the evaluate
    stage with exactly the calibrated model and photos it would have used."""
    from darknet2tflite.store.atomic import atomic_write, atomic_write_bytes
    d = Path(out)
    model, arr = d / CALIBRATED_FILE, d / IMAGES_FILE
    atomic_write_bytes(model, calibrated)
    atomic_write(arr, lambda f: np.save(f, np.ascontiguousarray(images, dtype=np.float32)))
    return ({"tflite_calibrated": model, "debug_images": arr},
            {"n_images": int(len(images)), "output_layers": dict(output_layers)})


def run_saved(calibrated: str | Path, images: str | Path, record: Mapping[str, Any]
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(:func:`layer_errors` of the saved inputs, its pass row for ``passes``)."""
    arr = np.load(images)
    t0 = time.perf_counter()
    rows = layer_errors(Path(calibrated).read_bytes(), arr,
                        {k: int(v) for k, v in record["output_layers"].items()})
    return rows, {"pass": DEBUG_PASS, "images": int(len(arr)),
                  "seconds": round(time.perf_counter() - t0, 2), "stage": "evaluate"}

"""Per-layer int8 error from TensorFlow's QuantizationDebugger, named by Darknet layer."""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Mapping

import numpy as np



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

"""build stage: cfg + weights (+ names) -> model.keras, model.float32.tflite, model.json."""
from __future__ import annotations

import os
from pathlib import Path


from darknet2tflite.darknet.metadata import write_json
from darknet2tflite.stages.parse import _parse_inputs
from darknet2tflite.stages.payload import Progress, quiet


def build_stage(cfg_path: str | Path, weights_path: str | Path, out_dir: str | Path,
                names_path: str | Path | None = None, rules=(),
                progress: Progress = quiet) -> dict[str, Path]:
    """model.keras + model.float32.tflite + model.json, with the given rewrite rules.

    One output per head, or several when a rule split a head (int8 head split): then
    model.json carries ``head_outputs``, per head the .tflite tensor names to concatenate."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg, weights, meta = _parse_inputs(cfg_path, weights_path, names_path, progress)
    progress(f"build Keras model ({len(cfg.layers)} layers"
             + (f", rewrites: {', '.join(r.name for r in rules)})" if rules else ")"))
    from darknet2tflite.model.builder import build_keras  # TensorFlow only once the inputs are known to be good
    from darknet2tflite.tflite.export import convert, head_groups, head_tensor_names, save_tflite
    from darknet2tflite.tflite.interpreter import interpreter
    model, applied = build_keras(cfg, weights, rules)
    meta["rewrites"] = applied
    groups = head_groups(model, meta)
    for h, g, sec in zip(meta["heads"], groups, cfg.heads()):
        h["outputs"] = g
        h["input_layer"] = sec.params["inputs"][0]
    keras_path = out / "model.keras"
    tmp = out / ".model.tmp.keras"
    model.save(tmp)
    os.replace(tmp, keras_path)
    progress("convert to float32 TFLite")
    data = convert(model, mode="float32")
    it = interpreter(data)
    tensors = [head_tensor_names(it, list(model.output_names), g) for g in groups]
    if any(len(g) > 1 for g in groups):
        meta["head_outputs"] = tensors
        meta["head_outputs_by_file"] = {"model.float32.tflite": tensors}
    else:
        for h, t in zip(meta["heads"], tensors):
            h["tflite_output"] = t[0]
    tfl = save_tflite(data, out / "model.float32.tflite", meta)
    write_json(out / "model.json", meta)
    return {"keras": keras_path, "tflite_float32": tfl, "meta": out / "model.json"}

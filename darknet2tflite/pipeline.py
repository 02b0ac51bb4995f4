"""Stage functions shared by the CLI and the Prefect tasks.

Each stage reads its inputs from paths and writes its artifacts into ``out_dir`` only, and
returns ``{artifact name: path}``; that is what lets the artifact store cache, verify and
re-run any one stage without the others.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import UserError
from .metadata import decode_metadata, read_names, write_json

Progress = Callable[[str], None]
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO_ROOT / "data" / "samples"


class ParityError(UserError):
    """The float model does not compute Darknet's function; carries the numbers."""


def _quiet(msg: str) -> None:
    pass


@contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Write into a sibling temp dir and move files into ``out_dir`` only on success, so a
    failed or killed run leaves nothing (or only the previous complete files) in --out."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        for src in sorted(tmp.rglob("*")):
            dst = out / src.relative_to(tmp)
            if src.is_dir():
                dst.mkdir(exist_ok=True)
            else:
                os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model_inputs(cfg_path: str | Path, weights_path: str | Path):
    from .cfg import parse_cfg
    from .weights import read_weights
    cfg = parse_cfg(cfg_path)
    return cfg, read_weights(weights_path, cfg)


def build_stage(cfg_path: str | Path, weights_path: str | Path, out_dir: str | Path,
                names_path: str | Path | None = None, rules=(),
                progress: Progress = _quiet) -> dict[str, Path]:
    """model.keras + model.float32.tflite + model.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress(f"parse {Path(cfg_path).name} + {Path(weights_path).name}")
    cfg, weights = load_model_inputs(cfg_path, weights_path)
    names = read_names(names_path)
    try:
        meta = decode_metadata(cfg, names)
    except ValueError as e:
        raise UserError(f"{names_path}: {e}") from None
    progress(f"build Keras model ({len(cfg.layers)} layers)")
    from .builder import build_keras  # TensorFlow only once the inputs are known to be good
    from .export import convert, head_tensor_names, interpreter, save_tflite
    model, applied = build_keras(cfg, weights, rules)
    meta["rewrites"] = applied
    keras_path = out / "model.keras"
    tmp = out / ".model.tmp.keras"
    model.save(tmp)
    os.replace(tmp, keras_path)
    progress("convert to float32 TFLite")
    data = convert(model, mode="float32")
    it = interpreter(data)
    tnames = head_tensor_names(it, list(model.output_names), [h["output"] for h in meta["heads"]])
    for h, t in zip(meta["heads"], tnames):
        h["tflite_output"] = t
    tfl = save_tflite(data, out / "model.float32.tflite", meta)
    write_json(out / "model.json", meta)
    return {"keras": keras_path, "tflite_float32": tfl, "meta": out / "model.json"}


def parity_images(images: str | Path | None, width: int, height: int, letter_box: bool,
                  limit: int = 4) -> tuple[np.ndarray, list[str]]:
    from .images import find_images, load_batch
    folder = Path(images) if images else DEFAULT_IMAGES
    paths = find_images(folder, limit=None)
    if not paths:
        raise UserError(f"no images (jpg/png/bmp) found in {folder}")
    paths = sorted(paths)[:limit]
    batch, skipped = load_batch(paths, width, height, letter_box)
    if len(batch) == 0:
        raise UserError(f"none of the images in {folder} could be read: {skipped}")
    return batch, [p.name for p in paths if p not in {s for s, _ in skipped}]


def parity_stage(cfg_path: str | Path, weights_path: str | Path, keras_path: str | Path,
                 tflite_path: str | Path, meta_path: str | Path, out_dir: str | Path,
                 images: str | Path | None = None, tolerance: float | None = None,
                 progress: Progress = _quiet) -> dict[str, Path]:
    """parity.json: Keras and float32 TFLite vs OpenCV DNN's own Darknet importer."""
    import keras
    from . import layers as _layers  # noqa: F401  (registers custom layers for loading)
    from .cfg import parse_cfg
    from .export import interpreter, run_tflite
    from .parity import PARITY_TOLERANCE, compare_heads, worst
    from .reference import opencv_heads, opencv_supports

    tol = PARITY_TOLERANCE if tolerance is None else tolerance
    cfg = parse_cfg(cfg_path)
    meta = json.loads(Path(meta_path).read_text())
    batch, names = parity_images(images, cfg.width, cfg.height, cfg.letter_box)
    progress(f"parity on {len(batch)} images: Keras, float32 TFLite vs OpenCV DNN")
    ok, reason = opencv_supports(cfg_path)
    result: dict = {"images": names, "tolerance": tol, "reference": "opencv-dnn "
                    + __import__("cv2").__version__}
    if not ok:
        result.update(status="skipped", reason=f"OpenCV cannot import this cfg: {reason}")
    else:
        ref = opencv_heads(cfg_path, weights_path, batch)
        model = keras.models.load_model(keras_path)
        k_out = model.predict(batch, batch_size=1, verbose=0)
        k_out = k_out if isinstance(k_out, list) else [k_out]
        t_out = run_tflite(interpreter(tflite_path), batch, meta)
        rows = {"keras": [r.as_dict() for r in compare_heads(ref, k_out)],
                "tflite_float32": [r.as_dict() for r in compare_heads(ref, t_out)]}
        w = max(max(r["max_rel"] for r in v) for v in rows.values())
        result.update(rows, max_rel=w, status="pass" if w <= tol else "fail")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "parity.json", result)
    if result["status"] == "fail":
        detail = "; ".join(f"{k} head {r['head']}: max_rel {r['max_rel']:.2e} max_abs "
                           f"{r['max_abs']:.2e}" for k in ("keras", "tflite_float32")
                           for r in result[k])
        raise ParityError(f"float32 parity check failed (tolerance {tol:.0e}): {detail}")
    return {"parity": out / "parity.json"}


def parse_stage(cfg_path: str | Path, weights_path: str | Path, out_dir: str | Path,
                names_path: str | Path | None = None,
                progress: Progress = _quiet) -> dict[str, Path]:
    """parsed.json: what the cfg + weights say before any model is built.

    The cheap first stage of the DAG: it fails in well under a second on a malformed cfg, a
    truncated or mismatched .weights file or a wrong names file (one-line UserErrors), before
    any model is built, and records layers, inferred shapes and the weights header.
    """
    progress(f"parse {Path(cfg_path).name} + {Path(weights_path).name}")
    cfg, weights = load_model_inputs(cfg_path, weights_path)
    names = read_names(names_path)
    try:
        meta = decode_metadata(cfg, names)
    except ValueError as e:
        raise UserError(f"{names_path}: {e}") from None
    layers = []
    n_params = 0
    for sec in cfg.layers:
        row: dict = {"index": sec.index, "type": sec.kind, "line": sec.line,
                     "activation": sec.params.get("activation"),
                     "out_shape": list(sec.params.get("out_shape") or [])}
        w = weights.layers.get(sec.index)
        if w is not None:
            n = sum(int(a.size) for a in (w.biases, w.weights, w.scales, w.rolling_mean,
                                          w.rolling_variance) if a is not None)
            row["params"] = n
            n_params += n
        layers.append(row)
    summary = {
        "cfg": Path(cfg_path).name,
        "weights": Path(weights_path).name,
        "input": meta["input"],
        "header": {"major": weights.major, "minor": weights.minor,
                   "revision": weights.revision, "seen": weights.seen},
        "n_layers": len(cfg.layers),
        "n_params": n_params,
        "heads": meta["heads"],
        "classes": sorted({h["classes"] for h in meta["heads"]}),
        "names": len(names) if names is not None else None,
        "layers": layers,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "parsed.json", summary)
    return {"parsed": out / "parsed.json"}

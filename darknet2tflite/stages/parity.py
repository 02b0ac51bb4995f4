"""parity stage: float Keras + float32 TFLite vs OpenCV DNN's Darknet importer -> parity.json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from darknet2tflite.errors import UserError
from darknet2tflite.paths import DEFAULT_IMAGES
from darknet2tflite.darknet.metadata import write_json
from darknet2tflite.stages.payload import Progress, quiet


class ParityError(UserError):
    """The float model does not compute Darknet's function; carries the numbers."""


def parity_images(images: str | Path | None, width: int, height: int, letter_box: bool,
                  limit: int = 4, channels: int = 3) -> tuple[np.ndarray, list[str]]:
    from darknet2tflite.images import check_network_channels, find_images, load_batch
    check_network_channels(channels)
    folder = Path(images) if images else DEFAULT_IMAGES
    paths = find_images(folder, limit=None)
    if not paths:
        raise UserError(f"no images (jpg/png/bmp) found in {folder}")
    paths = sorted(paths)[:limit]
    batch, skipped = load_batch(paths, width, height, letter_box, channels=channels)
    if len(batch) == 0:
        raise UserError(f"none of the images in {folder} could be read: {skipped}")
    return batch, [p.name for p in paths if p not in {s for s, _ in skipped}]


def parity_stage(cfg_path: str | Path, weights_path: str | Path, keras_path: str | Path,
                 tflite_path: str | Path, meta_path: str | Path, out_dir: str | Path,
                 images: str | Path | None = None, tolerance: float | None = None,
                 progress: Progress = quiet) -> dict[str, Path]:
    """parity.json: Keras and float32 TFLite vs OpenCV DNN's own Darknet importer."""
    import keras
    from darknet2tflite.model import layers as _layers  # noqa: F401  (registers custom layers for loading)
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.tflite.export import run_tflite
    from darknet2tflite.tflite.interpreter import interpreter
    from darknet2tflite.reference.parity import PARITY_TOLERANCE, compare_heads
    from darknet2tflite.reference.opencv import opencv_heads, opencv_supports

    tol = PARITY_TOLERANCE if tolerance is None else tolerance
    cfg = parse_cfg(cfg_path)
    meta = json.loads(Path(meta_path).read_text())
    batch, names = parity_images(images, cfg.width, cfg.height, cfg.letter_box,
                                 channels=cfg.channels)
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

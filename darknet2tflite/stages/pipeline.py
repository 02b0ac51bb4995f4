"""Stage functions shared by the CLI and the Prefect tasks.

Each stage reads its inputs from paths and writes its artifacts into ``out_dir`` only, and
returns ``{artifact name: path}``; that is what lets the artifact store cache, verify and
re-run any one stage without the others.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from darknet2tflite.errors import UserError
from darknet2tflite.paths import DEFAULT_IMAGES
from darknet2tflite.darknet.metadata import decode_metadata, read_names, write_json

Progress = Callable[[str], None]


class ParityError(UserError):
    """The float model does not compute Darknet's function; carries the numbers."""


def _quiet(msg: str) -> None:
    pass


PARTIAL_SUFFIX = ".partial"


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _clean_stale_partials(out: Path) -> None:
    """Remove ``.<name>.*.partial`` siblings of ``out`` left by killed runs.

    Every live :func:`staged_output` holds an exclusive flock on its own temp dir for as long
    as it exists, and the kernel drops it when the process dies: a dir we can lock is stale.
    """
    prefix = f".{out.name}."
    try:
        names = os.listdir(out.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(PARTIAL_SUFFIX)):
            continue
        path = out.parent / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, or not a real dir: not ours to touch
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run is writing it
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _locked_tempdir(out: Path) -> tuple[Path, int]:
    """A fresh ``.<name>.XXXX.partial`` dir next to ``out`` and an fd holding its flock."""
    while True:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=PARTIAL_SUFFIX,
                                    dir=out.parent))
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # removed as stale by a concurrent run before we could even open it
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # a concurrent _clean_stale_partials may have taken it for stale before we locked
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return tmp, fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Write into a sibling temp dir and move files into ``out_dir`` only on success, so a
    failed or killed run leaves nothing (or only the previous complete files) in --out.

    A new ``out_dir`` appears in one atomic rename, complete; an existing one gets each file
    replaced atomically.  Temp dirs of killed runs (``.<name>.*.partial``) are removed by the
    next run writing to the same place; those of live runs are flock-ed and left alone.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {out}: a parent of it exists and is not a directory") from None
    _clean_stale_partials(out)
    tmp, fd = _locked_tempdir(out)
    try:
        yield tmp
        if not os.path.lexists(out):
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it 0700
            try:
                os.rename(tmp, out)  # complete in one step
                return
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # a concurrent run created it meanwhile: merge file by file below
        out.mkdir(exist_ok=True)
        for src in sorted(tmp.rglob("*")):
            dst = out / src.relative_to(tmp)
            if src.is_dir():
                dst.mkdir(exist_ok=True)
            else:
                os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


def load_model_inputs(cfg_path: str | Path, weights_path: str | Path):
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.darknet.weights import read_weights
    cfg = parse_cfg(cfg_path)
    return cfg, read_weights(weights_path, cfg)


def _parse_inputs(cfg_path: str | Path, weights_path: str | Path,
                  names_path: str | Path | None, progress: Progress):
    """cfg, weights and decode metadata; every input problem is a one-line UserError."""
    progress(f"parse {Path(cfg_path).name} + {Path(weights_path).name}")
    cfg, weights = load_model_inputs(cfg_path, weights_path)
    try:
        meta = decode_metadata(cfg, read_names(names_path))
    except ValueError as e:
        raise UserError(f"{names_path}: {e}") from None
    return cfg, weights, meta


def build_stage(cfg_path: str | Path, weights_path: str | Path, out_dir: str | Path,
                names_path: str | Path | None = None, rules=(),
                progress: Progress = _quiet) -> dict[str, Path]:
    """model.keras + model.float32.tflite + model.json, with the given rewrite rules.

    One output per head, or several when a rule split a head (int8 head split): then
    model.json carries ``head_outputs``, per head the .tflite tensor names to concatenate."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg, weights, meta = _parse_inputs(cfg_path, weights_path, names_path, progress)
    progress(f"build Keras model ({len(cfg.layers)} layers"
             + (f", rewrites: {', '.join(r.name for r in rules)})" if rules else ")"))
    from darknet2tflite.model.builder import build_keras  # TensorFlow only once the inputs are known to be good
    from darknet2tflite.tflite.export import convert, head_groups, head_tensor_names, interpreter, save_tflite
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
                 progress: Progress = _quiet) -> dict[str, Path]:
    """parity.json: Keras and float32 TFLite vs OpenCV DNN's own Darknet importer."""
    import keras
    from darknet2tflite.model import layers as _layers  # noqa: F401  (registers custom layers for loading)
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.tflite.export import interpreter, run_tflite
    from darknet2tflite.reference.parity import PARITY_TOLERANCE, compare_heads, worst
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


def parse_stage(cfg_path: str | Path, weights_path: str | Path, out_dir: str | Path,
                names_path: str | Path | None = None,
                progress: Progress = _quiet) -> dict[str, Path]:
    """parsed.json: what the cfg + weights say before any model is built.

    The cheap first stage of the DAG: it fails in well under a second on a malformed cfg, a
    truncated or mismatched .weights file or a wrong names file (one-line UserErrors), before
    any model is built, and records layers, inferred shapes and the weights header.
    """
    cfg, weights, meta = _parse_inputs(cfg_path, weights_path, names_path, progress)
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
        "names": len(meta["names"]) if meta["names"] is not None else None,
        "layers": layers,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "parsed.json", summary)
    return {"parsed": out / "parsed.json"}

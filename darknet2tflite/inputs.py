"""Every input checked where it enters, before any stage runs.

Why here and not in the stages: a bad input found by a stage arrives after Prefect's and
TensorFlow's start-up, wrapped in their logs, sometimes after minutes of work (an empty
calibration folder used to be found only after parse, build, parity and rewrite).  The CLI
calls these checks in its own process before it imports Prefect or TensorFlow; the flows
call the same checks before their first task, for runs started from the UI.  Each problem
is one :class:`UserError` line naming the file and, where there is one, the line, section,
key or entry; values are cut (:func:`errors.shown`).  Imports nothing heavy: cfg and weights
parsing need numpy only, images are probed from their headers (imagefile.py), never decoded.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from darknet2tflite.errors import InputError, UserError, reason, shown, shown_path
from darknet2tflite.evaluation.coco_eval import AnnotationError, check_coco
from darknet2tflite.values import is_int, is_num

#: a JSON input (annotations, model.json, profile, manifest) larger than this is refused
#: unread; COCO's full val2017 instances file is 25 MB, train2017 448 MB
MAX_JSON_BYTES = 1 << 30
#: how many bad entries / skipped files a message names
SHOWN = 3


class ManifestError(InputError, ValueError):
    """A batch manifest (or its ``defaults:``) that cannot be used at all."""


# --------------------------------------------------------------------------- paths

def missing_file_hint(p: str | os.PathLike[str]) -> str:
    """Where a missing ``.weights`` file comes from (the rest of a one-line error)."""
    if not str(p).endswith(".weights"):
        return ""
    from darknet2tflite.darknet.fetch import KNOWN_WEIGHTS
    stem = Path(p).stem
    if stem in KNOWN_WEIGHTS:
        return f"; get it with `darknet2tflite weights fetch {stem}`"
    return ("; Darknet weights come with the model that was trained (darknet's "
            "backup/ folder); official ones: `darknet2tflite weights fetch NAME` for "
            f"{', '.join(KNOWN_WEIGHTS)}")


def resolved_file(p: str | None, what: str) -> str | None:
    """Absolute path of an input file parameter (None stays None)."""
    if p is None:
        return None
    if not os.path.lexists(p):
        raise UserError(f"{what} {shown_path(p)}: no such file{missing_file_hint(p)}")
    return str(existing_file(p, what).resolve())


def resolved_folder(p: str | None, what: str) -> str | None:
    """Absolute path of an input folder parameter (None stays None)."""
    return None if p is None else str(existing_folder(p, what).resolve())


def resolved_output(p: str | None, what: str) -> str | None:
    """Absolute path of a folder this run creates or writes into (``--out``, ``--store``);
    whether it can be written is :func:`writable_folder`'s question."""
    if p is None:
        return None
    path = Path(p).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {shown_path(p)}: exists and is not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} {shown_path(p)}: {parent} is not a directory")
            break
    return str(path.resolve())


def existing_file(p: str | os.PathLike[str], what: str) -> Path:
    """A regular file (symlinks followed); FIFOs and devices are refused unread."""
    from .walk import file_kind
    st, why = file_kind(p)
    if st is None:
        raise UserError(f"{what} {shown_path(p)}: {why}")
    return Path(p)


def existing_folder(p: str | os.PathLike[str], what: str) -> Path:
    path = Path(p)
    if not path.is_dir():
        raise UserError(f"{what} {shown_path(p)}: "
                        + ("no such folder" if not os.path.lexists(path) else "not a folder"))
    return path


def writable_folder(p: str | os.PathLike[str], what: str, label: str | None = None) -> Path:
    """A folder this run will create or replace (``--out``, ``--store``): refused now if it
    is a file, an ancestor is a file, or the nearest existing ancestor does not let us create
    anything in it.  Tried for real (a temp folder made and removed), because permission bits
    say nothing for root, while a read-only mount or an immutable folder stops root too."""
    path = Path(p).expanduser().absolute()
    label = label or shown_path(p)
    if os.path.lexists(path) and not path.is_dir():
        raise UserError(f"{what} {label}: exists and is not a folder")
    # --out is staged next to the folder (its parent must take new entries); the store
    # writes inside its own root
    is_store = what.lstrip("-") == "store"
    probe_in = path if (is_store and path.is_dir()) else path.parent if path.is_dir() else path
    for parent in [probe_in, *probe_in.parents]:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise UserError(f"{what} {label}: {shown_path(parent)} is not a folder")
            try:
                os.rmdir(tempfile.mkdtemp(prefix=".d2t-probe.", dir=parent))
            except OSError as e:
                raise UserError(f"{what} {label}: cannot create files in {shown_path(parent)} "
                                f"({e.strerror})") from None
            break
    if is_store and path.is_dir():
        check_store(path, what)
    return path


def check_store(root: Path, what: str = "--store") -> None:
    """The store's own sub-folders must be real folders (the store refuses symlinks there)."""
    import stat
    for sub in (".tmp", ".locks"):
        p = root / sub
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise UserError(f"{what} {shown_path(root)}: {sub} is not a real folder (a symlink or a "
                            "file); refusing to use this store")


# --------------------------------------------------------------------------- model files

def check_model(cfg: str | os.PathLike[str], weights: str | os.PathLike[str],
                names: str | os.PathLike[str] | None = None):
    """cfg parsed (bounds included), weights read and checked against it, names counted."""
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.darknet.metadata import decode_metadata
    from darknet2tflite.darknet.weights import read_weights
    parsed = parse_cfg(existing_file(cfg, "cfg"))
    read_weights(existing_file(weights, "weights"), parsed)
    if names is not None:
        names_list = read_names_file(existing_file(names, "names"))
        try:
            decode_metadata(parsed, names_list)
        except ValueError as e:
            raise UserError(f"{shown_path(names)}: {e}") from None
    return parsed


def read_names_file(path: Path) -> list[str]:
    """Class names, one per line; blank lines and surrounding spaces are ignored."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"names {shown_path(path)}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"names {shown_path(path)}: cannot read ({e.strerror})") from None
    return [n for n in (ln.strip() for ln in text.splitlines()) if n]


# --------------------------------------------------------------------------- images

def check_image_folder(folder: str | os.PathLike[str], what: str) -> None:
    """At least one image under ``folder`` passes the header probe (readable regular file,
    known size within bounds, not truncated); stops at the first that does."""
    from .imagefile import probe_image
    from .images import IMAGE_EXTENSIONS, image_walk
    root = existing_folder(folder, what)
    walk = image_walk(root)
    bad: list[str] = [f"{shown(p.name, 40)} ({why})" for p, why in walk.skipped
                      if p.suffix.lower() in IMAGE_EXTENSIONS]
    for p in walk.files:
        try:
            probe_image(p)
            return
        except UserError as e:
            bad.append(f"{shown(p.name, 40)} ({reason(str(e), p)})")
    exts = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    if not bad:
        raise UserError(f"{what} {shown_path(folder)}: no images ({exts}) found")
    raise UserError(f"{what} {shown_path(folder)}: none of the {len(bad)} image file(s) could "
                    "be read as an image: "
                    + "; ".join(bad[:SHOWN]) + (" ..." if len(bad) > SHOWN else ""))


def check_image_file(path: str | os.PathLike[str], what: str = "image") -> None:
    from .imagefile import probe_image
    existing_file(path, what)
    try:
        probe_image(path)
    except UserError as e:
        raise UserError(f"{what} {e}") from None


# --------------------------------------------------------------------------- JSON inputs

def load_json(path: str | os.PathLike[str], what: str) -> Any:
    p = existing_file(path, what)
    size = os.stat(p).st_size
    if size > MAX_JSON_BYTES:
        raise UserError(f"{what} {shown_path(p)}: {size} bytes, more than {MAX_JSON_BYTES}")
    try:
        return json.loads(p.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {shown_path(p)}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {shown_path(p)}:{e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise UserError(f"{what} {shown_path(p)}: JSON nested too deeply") from None


def check_annotations(path: str | os.PathLike[str], what: str = "--eval-annotations") -> None:
    try:
        check_coco(load_json(path, what), path)
    except AnnotationError as e:
        raise AnnotationError(f"{what} {e}") from None


def check_model_json(meta: Any, where: str) -> dict[str, Any]:
    """The decode metadata ``detect`` needs (model.json or the copy embedded in a .tflite)."""
    def bad(key: str, why: str) -> UserError:
        return UserError(f"{where}: key '{key}': {why}")

    if not isinstance(meta, dict):
        raise UserError(f"{where}: not a JSON object")
    inp = meta.get("input")
    if not isinstance(inp, dict):
        raise bad("input", "missing or not an object")
    for k in ("width", "height"):
        if not (is_int(inp.get(k)) and 0 < inp[k] <= 8192):
            raise bad(f"input.{k}", f"must be an integer in 1..8192, got {shown(inp.get(k), 40)}")
    if inp.get("channels", 3) not in (1, 3):
        raise bad("input.channels", f"must be 1 or 3, got {shown(inp.get('channels'), 40)}")
    if inp.get("letter_box", 0) not in (0, 1, True, False):
        raise bad("input.letter_box", "must be 0 or 1")
    heads = meta.get("heads")
    if not isinstance(heads, list) or not heads:
        raise bad("heads", "missing or empty")
    for i, h in enumerate(heads):
        if not isinstance(h, dict):
            raise bad(f"heads[{i}]", "not an object")
        if h.get("type", "yolo") not in ("yolo", "region"):
            raise bad(f"heads[{i}].type", "must be 'yolo' or 'region'")
        if not (is_int(h.get("classes")) and h["classes"] > 0):
            raise bad(f"heads[{i}].classes", "must be a positive integer")
        anchors = h.get("anchors")
        if not isinstance(anchors, list) or not anchors or not all(
                is_num(a) or (isinstance(a, list) and all(map(is_num, a))) for a in anchors):
            raise bad(f"heads[{i}].anchors", "must be a non-empty list of numbers")
        if not isinstance(h.get("mask", []), list) or not all(map(is_int, h.get("mask", []))):
            raise bad(f"heads[{i}].mask", "must be a list of integers")
    names = meta.get("names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str)
                                                                  for n in names)):
        raise bad("names", "must be a list of strings or null")
    return meta


def check_tflite_file(path: str | os.PathLike[str], what: str = "model") -> Path:
    """A regular file that starts like a TFLite flatbuffer (file identifier ``TFL3``)."""
    p = existing_file(path, what)
    with open(p, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise UserError(f"{what} {shown_path(path)}: not a .tflite model (no TFL3 identifier)")
    return p


# --------------------------------------------------------------------------- profiles

#: profile field -> (accepted JSON types, what to say)
_PROFILE_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"),
    "description": ((str,), "a string"),
    "source": ((dict,), "an object"),
    "converter": ((str,), "a string"),
    "allowed_ops": ((list, type(None)), "a list of op names or null"),
    "require_integer": ((bool,), "true or false"),
    "float_only_ops": ((list,), "a list of op names"),
    "op_input_dtypes": ((dict,), "an object"),
    "min_sqnr_db": ((int, float, type(None)), "a number or null"),
    "max_quant_scale": ((int, float, type(None)), "a number or null"),
    "notes": ((list,), "a list of strings"),
}


def check_profile_fields(d: Mapping[str, Any], origin: str, error: type[Exception]) -> None:
    """Every known field of a target profile has its JSON type (a wrong type used to pass
    the load and fail later with a traceback)."""
    for key, (types, what) in _PROFILE_TYPES.items():
        if key in d and (not isinstance(d[key], types) or isinstance(d[key], bool)
                         and bool not in types):
            raise error(f"{shown_path(origin)}: key '{key}': must be {what}, got "
                        f"{shown(json.dumps(d[key]), 40)}")
    for key in ("allowed_ops", "float_only_ops", "notes"):
        if isinstance(d.get(key), list) and not all(isinstance(x, str) for x in d[key]):
            raise error(f"{shown_path(origin)}: key '{key}': every entry must be a string")


# --------------------------------------------------------------------------- batch

def check_manifest_defaults(defaults: Any, path: str | os.PathLike[str],
                            known: tuple[str, ...]) -> dict[str, Any]:
    """A manifest's ``defaults:`` block applies to every model, so a bad one refuses the
    whole batch up front (a per-model error for each would say the same thing N times)."""
    if defaults is None:
        return {}
    if not isinstance(defaults, dict):
        raise ManifestError(f"{shown_path(path)}: 'defaults' must be a mapping of convert "
                            f"options, got {type(defaults).__name__}")
    unknown = sorted(str(k) for k in defaults if k not in known or k == "name")
    if unknown:
        raise ManifestError(f"{shown_path(path)}: 'defaults' has unknown key(s) "
                            f"{shown(', '.join(unknown), 60)} (known: {', '.join(known[1:])})")
    return defaults


# --------------------------------------------------------------------------- convert

#: the flow parameters that are paths
PATH_PARAMETERS = ("cfg", "weights", "names", "out", "store", "calibration", "eval_images",
                   "eval_annotations", "images")


def check_convert_inputs(p: Mapping[str, Any], spell: Any = str) -> None:
    """The checks of one ``convert`` run's parameters (CLI ``parameters_from_args`` or the
    flow's own), in the order a user would fix them; ``spell`` names an option."""
    for key in PATH_PARAMETERS:
        if isinstance(p.get(key), str):
            try:
                p[key].encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"{spell(key)} {shown_path(p[key])}: the path is not valid UTF-8, "
                                "and Prefect records every parameter as UTF-8 JSON; rename "
                                "it (file names inside the folders may be in any encoding)"
                                ) from None
    if p.get("out") is not None:
        writable_folder(p["out"], spell("out"))
    if p.get("store") is not None:
        writable_folder(p["store"], spell("store"))
    check_model(p["cfg"], p["weights"], p.get("names"))
    if p.get("calibration") is not None:
        check_image_folder(p["calibration"], spell("calibration"))
    if p.get("eval_images") is not None:
        existing_folder(p["eval_images"], spell("eval_images"))
    if p.get("eval_annotations") is not None:
        check_annotations(p["eval_annotations"], spell("eval_annotations"))
    if p.get("images") is not None:
        check_image_folder(p["images"], spell("images"))
    if p.get("calibration") is not None:
        # the quantize stage's own split of calibration / evaluation images (annotations
        # matching no image, one image for both roles): refused now, not after four stages
        from darknet2tflite.int8.planning import plan_images
        plan_images(p["calibration"], p.get("eval_images"), p.get("eval_annotations"))


# --------------------------------------------------------------------------- detect

#: what ``detect --out`` can be written as (cv2.imencode by extension; none = PNG)
DETECT_OUT_SUFFIXES = ("", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def check_detect_inputs(model: str, image: str, out: str) -> dict[str, Any] | None:
    """``detect``'s paths, before TensorFlow is imported; returns the checked model.json
    beside the model (None when there is none: the embedded copy is read later)."""
    check_tflite_file(model, "model")
    check_image_file(image, "image")
    out_p = Path(out)
    if out_p.is_dir():
        raise UserError(f"--out {shown_path(out)}: is a folder; give the image file to write")
    if out_p.suffix.lower() not in DETECT_OUT_SUFFIXES:
        raise UserError(f"--out {shown_path(out)}: unknown image type {shown(out_p.suffix, 20)} "
                        f"(use {', '.join(s for s in DETECT_OUT_SUFFIXES if s)})")
    writable_folder(out_p.absolute().parent / ".d2t-out", "--out", label=shown_path(out))
    side = Path(model).with_name("model.json")
    if side.exists():
        return check_model_json(load_json(side, "model.json"), shown_path(side))
    return None

"""The convert options, in one table: name, type, default, check and help of each.

Everything that spells an option is derived from :data:`OPTIONS`: the CLI's flags
(:func:`add_cli_arguments`), the Prefect flow's parameter checks (:func:`check_parameters`;
its signature stays explicit Python, since the UI builds its form from it, and
tests/test_options.py holds it equal to this table), the batch manifest keys
(:data:`MANIFEST_KEYS`, :data:`PATH_KEYS`) and the defaults the stage cache keys use
(:func:`value`).  Adding an option is one :class:`Option` entry (plus the flow parameter).

A bad option has to be refused three times over: by ``darknet2tflite convert`` before
Prefect and TensorFlow load (one line, exit 2), by the Prefect flow before any stage runs
(runs triggered from the UI never pass through the CLI), and by the library on direct calls
(:meth:`QuantizeOptions.validate`).  Each caller only spells the option its own way
(``--channel-split`` vs ``channel_split``).  Imports nothing heavy, for the CLI's sake.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from darknet2tflite.errors import InputError, UserError, shown
from darknet2tflite.int8.augment import MIRROR_BELOW
from darknet2tflite.int8.channel_split import MAC_BUDGET
from darknet2tflite.stages import STAGES

VARIANTS = ("float16", "dynamic", "int16x8")
INPUT_TYPES = ("uint8", "int8")
RANGE_METHODS = ("mse", "mse-tail", "minmax")
BACKENDS = ("direct", "onnx2tf", "both")


def variant_list(spec: str | Sequence[str] | None) -> list[str]:
    """``"float16, dynamic"`` (CLI / flow parameter) or a sequence -> list of names."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [v.strip() for v in items if v.strip()]


def _one_of(choices: Sequence[str]) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"expected one of {', '.join(choices)}"


def _at_least(low: float, note: str = "") -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be >= {low:g}{note}"


def _fraction(v: Any) -> str | None:
    return None if 0.0 <= v <= 1.0 else ("expected a fraction of the model's "
                                         "multiply-accumulates within 0..1 (0 = off)")


def _variants(v: Any) -> str | None:
    bad = [x for x in variant_list(v) if x not in VARIANTS]
    return f"unknown {', '.join(bad)} (choose from {', '.join(VARIANTS)})" if bad else None


#: option -> check returning what is wrong with a value, or None; options absent from the
#: values (or None: "not given, use the default") are not checked
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "input_type": _one_of(INPUT_TYPES),
    "ranges": _one_of(RANGE_METHODS),
    "variants": _variants,
    "calibration_limit": _at_least(1),
    "float_fallback": _at_least(0),
    "channel_split": _fraction,
    "calibration_mirror": _at_least(0, " (0 = off)"),
    "backend": _one_of(BACKENDS),
}


def problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(option, what is wrong) for every checked option in ``values`` that is invalid."""
    out = []
    for name, check in CHECKS.items():
        v = values.get(name)
        if v is not None:
            why = check(v)
            if why:
                out.append((name, why))
    return out


def check(values: Mapping[str, Any], spell: Callable[[str], str] = str,
          error: type[Exception] = InputError) -> None:
    """Raise ``error`` naming the first invalid option as the caller spells it."""
    bad = problems(values)
    if bad:
        name, why = bad[0]
        v = values[name]
        value = ",".join(variant_list(v)) if name == "variants" else v
        raise error(f"{spell(name)} {shown(value)}: {shown(why, 200)}")


def cli_flag(name: str) -> str:
    """How the CLI spells an option (``channel_split`` -> ``--channel-split``)."""
    return "--" + name.replace("_", "-")


# --------------------------------------------------------------------------- the table

#: path kinds: an input file, an input folder, or a folder this run creates / writes into
FILE, FOLDER, OUTPUT = "file", "folder", "output"


@dataclass(frozen=True)
class Option:
    """One convert option.  ``cli``: "positional", "flag" or None (flow-only);
    ``manifest``: a batch manifest entry may set it; ``path``: FILE / FOLDER / OUTPUT."""

    name: str
    type: type
    default: Any = None
    help: str = ""
    check: Callable[[Any], str | None] | None = None
    path: str | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    required: bool = False
    cli: str | None = "flag"
    manifest: bool = True


OPTIONS: tuple[Option, ...] = (
    Option("cfg", str, help="Darknet .cfg file", path=FILE, required=True, cli="positional"),
    Option("weights", str, help="Darknet .weights file matching the cfg", path=FILE,
           required=True, cli="positional"),
    Option("out", str, required=True, path=OUTPUT, manifest=False,
           help="output folder (model.keras, model.float32.tflite, model.int8.tflite, "
                "model.json, report.json, report.md), written when the run succeeds"),
    Option("calibration", str, required=True, path=FOLDER,
           help="folder of calibration images (jpg/png/bmp, searched recursively)"),
    Option("eval_annotations", str, path=FILE,
           help="COCO-format json for AP/AP50 (needs --eval-images)"),
    Option("eval_images", str, path=FOLDER, help="folder of evaluation images"),
    Option("names", str, path=FILE,
           help="class names, one per line (used in reports and drawings)"),
    Option("input_type", str, "uint8", choices=INPUT_TYPES, check=CHECKS["input_type"],
           help="int8 model input: uint8 raw pixels (scale 1/255, zero point 0) or int8 "
                "(default: %(default)s)"),
    Option("calibration_limit", int, 500, metavar="N", check=CHECKS["calibration_limit"],
           help="use at most N calibration images, shuffled deterministically "
                "(default: %(default)s)"),
    Option("float_fallback", int, 0, metavar="N", check=CHECKS["float_fallback"],
           help="also write model.int8-fallback.tflite with the N most "
                "quantization-sensitive layers kept float, and report what it buys"),
    Option("channel_split", float, MAC_BUDGET, metavar="BUDGET", check=CHECKS["channel_split"],
           help="split outlier channels of early layers before int8 calibration "
                "(exact in float, finer int8 steps) while the extra multiply-"
                "accumulates stay within BUDGET x the model's; 0 turns it off "
                "(default: %(default)s)"),
    Option("equalize", bool, False,
           help="instead of splitting outlier channels, equalize their ranges into the "
                "next layers' weights (exact in float, those weights rounded with error "
                "feedback): no extra multiply-accumulates, so the int8 model runs as fast "
                "as a plain int8 conversion; measured held out it loses more AP50 "
                "(docs/int8.md, \"Range equalization\")"),
    Option("calibration_mirror", int, MIRROR_BELOW, metavar="N",
           check=CHECKS["calibration_mirror"],
           help="calibration sets of fewer than N images also calibrate on a "
                "left-right mirrored copy of every image (int8); 0 turns it off "
                "(default: %(default)s)"),
    Option("variants", str, "", check=CHECKS["variants"],
           help="comma list of float16,dynamic,int16x8"),
    Option("backend", str, "direct", choices=BACKENDS, check=CHECKS["backend"],
           help="int8 conversion route: TFLiteConverter (direct), Keras -> ONNX -> "
                "onnx2tf, or both (compared, the better one shipped); default: "
                "%(default)s"),
    Option("from_stage", str, choices=STAGES, manifest=False, metavar="STAGE",
           help="rerun from STAGE, reusing earlier artifacts; STAGE is one of "
                f"{', '.join(STAGES)}"),
    Option("store", str, path=OUTPUT, manifest=False,
           help="artifact store folder (default: $DARKNET2TFLITE_STORE, else .store in the "
                "current folder)"),
    Option("images", str, path=FOLDER,
           help="images for the float parity check (default: samples)"),
    Option("target", str, "cpu", metavar="LIST",
           help="comma list of deployment targets: cpu (LiteRT), tflm (TensorFlow "
                "Lite Micro), ethos-u55-256 or any other Vela accelerator config; "
                "each is verified with its own tool (default: %(default)s)"),
    Option("allow_approximate", str, "", metavar="RULES",
           help="comma list of approximate rewrite rules allowed to meet a target "
                "(e.g. mish_poly for tflm); their deviation is reported"),
    Option("npu_only", bool, False,
           help="refuse a model Vela would run partly on the CPU (Ethos-U targets)"),
    Option("name", str, cli=None, help="label of the run and its UI artifacts "
                                       "(default: the cfg file's stem)"),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
#: keys a batch manifest entry may set
MANIFEST_KEYS: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.manifest)
#: manifest keys holding paths (resolved relative to the manifest)
PATH_KEYS: tuple[str, ...] = tuple(o.name for o in OPTIONS
                                   if o.manifest and o.path in (FILE, FOLDER))


def value(params: Mapping[str, Any], name: str) -> Any:
    """``params[name]`` as its option's type, the table's default when absent or None."""
    opt = BY_NAME[name]
    v = params.get(name)
    return opt.default if v is None else opt.type(v)


def add_cli_arguments(parser: Any) -> None:
    """The ``convert`` command's arguments, one per CLI option of the table."""
    for o in OPTIONS:
        if o.cli == "positional":
            parser.add_argument(o.name, help=o.help)
        elif o.cli == "flag":
            kw: dict[str, Any] = {"help": o.help}
            if o.type is bool:
                parser.add_argument(cli_flag(o.name), action="store_true", **kw)
                continue
            if o.required:
                kw["required"] = True
            if o.type is not str:
                kw["type"] = o.type
            if o.default is not None:
                kw["default"] = o.default
            if o.metavar:
                kw["metavar"] = o.metavar
            if o.choices and o.name != "from_stage":  # from_stage: checked with the others
                kw["choices"] = o.choices
            parser.add_argument(cli_flag(o.name), **kw)


def _spell_cli(name: str) -> str:
    return name if BY_NAME[name].cli == "positional" else cli_flag(name)


def normalized_parameters(params: Mapping[str, Any], cli: bool = False) -> dict[str, Any]:
    """The checks of the option values themselves (no input is opened): ``params`` with
    paths made absolute, variants and targets spelled canonically.  The batch CLI's
    parameters are this; a single conversion's go on to :func:`check_parameters`."""
    spell = _spell_cli if cli else str
    from_stage = params.get("from_stage")
    if from_stage and from_stage not in STAGES:
        raise UserError(f"{spell('from_stage')} {from_stage}: expected one of "
                        f"{', '.join(STAGES)}")
    if params.get("eval_annotations") is not None and params.get("eval_images") is None:
        raise UserError(f"{spell('eval_annotations')} needs {spell('eval_images')} "
                        "(the annotated images)")
    check(params, spell=spell, error=UserError)
    from darknet2tflite.inputs import resolved_file, resolved_folder, resolved_output
    resolve = {FILE: resolved_file, FOLDER: resolved_folder, OUTPUT: resolved_output}
    out = dict(params)
    for o in OPTIONS:
        if o.path and o.name in params:
            out[o.name] = resolve[o.path](params[o.name], spell(o.name))
    if "variants" in params:
        out["variants"] = ",".join(variant_list(params["variants"]))
    from darknet2tflite.targets import check_spec
    out["target"] = ",".join(check_spec(params.get("target"), bool(params.get("npu_only"))))
    return out


def allowed_rules(params: Mapping[str, Any]) -> str:
    """``allow_approximate`` checked against the rule registry (which loads Keras: only
    asked when rules are named at all)."""
    named = variant_list(params.get("allow_approximate"))
    if not named:
        return ""
    from darknet2tflite.targets.requirements import check_allowed
    return ",".join(check_allowed(named))


def check_parameters(params: Mapping[str, Any], cli: bool = False) -> dict[str, Any]:
    """Every check of a conversion's parameters, before anything heavy runs; returns them
    with paths made absolute.  ``cli``: errors spell the options as flags."""
    out = normalized_parameters(params, cli)
    from darknet2tflite.inputs import check_convert_inputs
    check_convert_inputs(out, spell=_spell_cli if cli else str)  # cfg, weights, images...
    if variant_list(params.get("allow_approximate")):
        out["allow_approximate"] = allowed_rules(params)
    return out

"""Checks of the int8 conversion options, in one table for the library, the CLI and the flow.

A bad option has to be refused three times over: by ``darknet2tflite convert`` before
Prefect and TensorFlow load (one line, exit 2), by the Prefect flow before any stage runs
(runs triggered from the UI never pass through the CLI), and by the library on direct calls.
One table keeps the three in agreement; each caller only spells the option its own way
(``--channel-split`` vs ``channel_split``). Imports nothing heavy, for the CLI's sake.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from darknet2tflite.errors import InputError

VARIANTS = ("float16", "dynamic", "int16x8")
INPUT_TYPES = ("uint8", "int8")
RANGE_METHODS = ("mse", "mse-tail", "minmax")


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
        shown = ",".join(variant_list(v)) if name == "variants" else v
        raise error(f"{spell(name)} {shown}: {why}")


def cli_flag(name: str) -> str:
    """How the CLI spells an option (``channel_split`` -> ``--channel-split``)."""
    return "--" + name.replace("_", "-")

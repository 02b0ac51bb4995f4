"""Deployment targets: where the int8 model will run, and the real tool that proves it.

A target names a device runtime (``cpu``: LiteRT with XNNPACK; ``tflm``: TensorFlow Lite for
Microcontrollers; ``ethos-u55-256`` ...: an Arm Ethos-U NPU behind Vela). Each target kind is
one module of this package registering a :class:`TargetKind`; a kind knows its names, the
op-probe profile that is its fast first filter (``profiles/*.json``), and how its own tool
judges one layer (:meth:`Target.probe_layer`) and the final model (:meth:`Target.verify`).

Why the tool and not the op list: an op list copied from a header drifts from the runtime
that ships, and says nothing about dtypes a kernel accepts at Prepare time, arena needs, or
NPU placement. The list stays only because it is free; the tool has the last word.

Imports nothing heavy, so the CLI can check ``--target`` before TensorFlow loads.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Protocol, Sequence

from ..errors import InputError

DEFAULT_TARGETS = "cpu"
#: probe profile names accepted as ``target`` by the flow before deployment targets existed:
#: ``int8`` is what ``cpu`` probes; ``float`` and profile .json paths probe without a device
LEGACY_PROFILES = {"int8": "cpu"}


class TargetError(InputError):
    """An unknown target name or a target the model cannot meet (one-line user error)."""


@dataclass
class LayerVerdict:
    """What a target's own tool says about one layer's tiny int8 model."""

    runs: bool
    reason: str = ""
    cpu_ops: list[str] = field(default_factory=list)  # NPU targets: ops left to the CPU
    details: dict[str, Any] = field(default_factory=dict)


class Target(Protocol):
    name: str
    #: probe profile (profiles/<profile>.json) that filters layers before the tool runs
    profile: str
    #: int8 arithmetic the device runs: "xnnpack" (LiteRT default) or "reference" (TFLite
    #: reference kernels: TFLite Micro, and what Vela's NPU kernels are bit-exact to)
    arithmetic: str

    def tool(self) -> dict[str, str]: ...

    def probe_layer(self, model: bytes) -> LayerVerdict | None: ...

    def verify(self, model: bytes, inputs: Sequence[Any], out_dir: Any,
               reference: Sequence[Sequence[Any]] | None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TargetKind:
    """One module's targets: ``names()`` lists what it accepts, ``make(name)`` builds one."""

    kind: str
    names: Callable[[], list[str]]
    make: Callable[[str], Target]
    claims: Callable[[str], bool]


KINDS: dict[str, TargetKind] = {}
_MODULES = ("cpu", "tflm", "ethos_u")


def register(kind: TargetKind) -> TargetKind:
    KINDS[kind.kind] = kind
    return kind


def _load() -> dict[str, TargetKind]:
    for m in _MODULES:
        importlib.import_module(f"{__name__}.{m}")
    return KINDS


def tool_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def target_list(spec: str | Sequence[str] | None) -> list[str]:
    """``"tflm, ethos-u55-256"`` or a sequence -> names, in order, without duplicates."""
    if spec is None:
        return [DEFAULT_TARGETS]
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for s in (str(x).strip() for x in items):
        if s and s not in out:
            out.append(s)
    return out or [DEFAULT_TARGETS]


def known_names() -> list[str]:
    return [n for k in _load().values() for n in k.names()]


def get_target(name: str) -> Target:
    name = LEGACY_PROFILES.get(name, name)
    for kind in _load().values():
        if kind.claims(name):
            return kind.make(name)
    raise TargetError(f"unknown target {name!r} (known: {', '.join(known_names())})")


def parse_targets(spec: str | Sequence[str] | None) -> list[Target]:
    return [get_target(n) for n in target_list(spec)]


def is_legacy_profile(name: str) -> bool:
    """``float`` or a profile .json: a probe profile without a device to verify on."""
    return name == "float" or name.endswith(".json")


def verified_targets(spec: str | Sequence[str] | None) -> list[str]:
    """The requested targets with a tool of their own to verify on (not ``cpu``, whose
    interpreter the evaluate stage already runs, nor bare probe profiles)."""
    return [n for n in target_list(spec) if not is_legacy_profile(n)
            and LEGACY_PROFILES.get(n, n) != "cpu"]


def probe_profiles(spec: str | Sequence[str] | None) -> list[Any]:
    """The probe profiles for the requested targets, one per target and named after it, so
    the probe's per-target verdicts and the layer checks of the target's tool line up."""
    from dataclasses import replace

    from darknet2tflite.probe.profiles import load_profile
    out = []
    for name in target_list(spec):
        try:
            t = None if is_legacy_profile(name) else get_target(name)
        except TargetError:
            t = None  # a packaged profile by name, or load_profile's one-line error
        if t is None:
            out.append(load_profile(name))
            continue
        p = load_profile(t.profile)
        # cpu keeps the int8 profile's own name: probe.json rows stay keyed "int8"
        out.append(p if t.name == "cpu" or p.name == t.name else replace(p, name=t.name))
    return out


def layer_check(profile_name: str) -> Callable[[bytes], LayerVerdict | None] | None:
    """The probe's hook: the tool check of the target a probe profile stands for."""
    if is_legacy_profile(profile_name) or profile_name in LEGACY_PROFILES:
        return None
    try:
        return get_target(profile_name).probe_layer
    except TargetError:
        return None


def check_spec(spec: str | Sequence[str] | None, npu_only: bool = False) -> list[str]:
    """Validate ``--target`` (one line naming the bad name) and return the names."""
    names = target_list(spec)
    for n in names:
        if not is_legacy_profile(n):
            get_target(n)
    if npu_only and not any(n.startswith("ethos-u") for n in names):
        raise TargetError("--npu-only needs an Ethos-U target in --target "
                          f"(got {', '.join(names)})")
    return names

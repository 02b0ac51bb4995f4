"""Target profiles: what a TFLite target accepts (packaged JSON in darknet2tflite/profiles/, or a path)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any


from darknet2tflite.errors import InputError


class ProfileError(InputError):
    """Unknown target profile or a malformed profile JSON (one-line user error)."""


# --------------------------------------------------------------------------- profiles

@dataclass(frozen=True)
class Profile:
    """A deployment target as data (``profiles/*.json``): which converter settings to use
    and which ops/dtypes the target's runtime accepts."""

    name: str
    description: str
    source: dict[str, Any]
    converter: str                       # "int8" (full integer) or "float"
    allowed_ops: frozenset[str] | None   # None: whatever the converter emits
    require_integer: bool
    float_only_ops: frozenset[str] = frozenset()
    #: {"GATHER": {"1": ["int32"]}}: dtypes a kernel accepts for the op's k-th input
    op_input_dtypes: dict[str, dict[int, tuple[str, ...]]] = field(default_factory=dict)
    min_sqnr_db: float | None = None
    max_quant_scale: float | None = None
    notes: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "<profile>") -> "Profile":
        from darknet2tflite.inputs import check_profile_fields
        check_profile_fields(d, origin, ProfileError)  # JSON types, before they are used
        try:
            conv = d["converter"]
            if conv not in ("int8", "float"):
                raise ProfileError(f"{origin}: converter must be 'int8' or 'float', got {conv!r}")
            allowed = d.get("allowed_ops")
            return cls(
                name=str(d["name"]), description=str(d.get("description", "")),
                source=dict(d.get("source") or {}), converter=conv,
                allowed_ops=None if allowed is None else frozenset(map(str.upper, allowed)),
                require_integer=bool(d.get("require_integer", conv == "int8")),
                float_only_ops=frozenset(map(str.upper, d.get("float_only_ops") or ())),
                op_input_dtypes={str(op).upper(): {int(k): tuple(v) for k, v in c.items()}
                                 for op, c in (d.get("op_input_dtypes") or {}).items()},
                min_sqnr_db=d.get("min_sqnr_db"), max_quant_scale=d.get("max_quant_scale"),
                notes=tuple(d.get("notes") or ()),
            )
        except KeyError as e:
            raise ProfileError(f"{origin}: profile is missing the field {e.args[0]!r}") from None
        except (TypeError, AttributeError) as e:
            raise ProfileError(f"{origin}: malformed profile ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["allowed_ops"] = None if self.allowed_ops is None else sorted(self.allowed_ops)
        d["float_only_ops"] = sorted(self.float_only_ops)
        d["notes"] = list(self.notes)
        d["op_input_dtypes"] = {op: {str(k): list(v) for k, v in c.items()}
                                for op, c in self.op_input_dtypes.items()}
        return d


def available_profiles() -> list[str]:
    folder = resources.files("darknet2tflite") / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(target: "str | Path | Profile") -> Profile:
    """A packaged profile by name (``int8``, ``float``, ``tflm``) or a JSON file path."""
    if isinstance(target, Profile):
        return target
    name = str(target)
    packaged = resources.files("darknet2tflite") / "profiles" / f"{name}.json"
    if "/" not in name and not name.endswith(".json") and packaged.is_file():
        return Profile.from_dict(json.loads(packaged.read_text()), f"profiles/{name}.json")
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ProfileError(f"{path}: cannot read profile JSON ({e})") from None
        if not isinstance(data, dict):
            raise ProfileError(f"{path}: a profile must be a JSON object")
        return Profile.from_dict(data, str(path))
    raise ProfileError(f"unknown target profile {name!r} (available: "
                       f"{', '.join(available_profiles())}, or a path to a profile .json)")

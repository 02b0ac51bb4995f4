"""What one int8 conversion produced and measured (quantize.json)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any




# --------------------------------------------------------------------------- stage

@dataclass
class QuantizeResult:
    paths: dict[str, Path]
    seconds: float
    memory: dict[str, Any]
    integer_check: dict[str, Any]
    ranges: dict[str, Any] = field(default_factory=dict)
    layer_errors: list[dict[str, Any]] = field(default_factory=list)
    fallback: dict[str, Any] | None = None
    variants: dict[str, Any] = field(default_factory=dict)
    channel_split: dict[str, Any] = field(default_factory=dict)
    mirrored_images: int = 0             # mirrored copies added to the calibration images
    range_method: str = ""               # QuantizeOptions.ranges ("" in results before it)
    box_rounding: dict[str, Any] = field(default_factory=dict)  # box_rounding.py report
    equalize: dict[str, Any] = field(default_factory=dict)  # equalize.py report
    passes: dict[str, Any] = field(default_factory=dict)  # passes.PassLog over the photos
    #: what the evaluate stage needs to run the per-layer debugger (debugger.save_debug_inputs);
    #: empty when ``layer_errors`` were measured here (float fallback) or not asked for
    debugger: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # file names only: quantize.json travels (staging dir -> store entry -> --out), and
        # every file it names sits next to it
        d["paths"] = {k: Path(v).name for k, v in self.paths.items()}
        return d

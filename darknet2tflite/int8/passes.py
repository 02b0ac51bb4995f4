"""What an int8 conversion spends on the calibration photos, pass by pass.

Why: the conversion's cost is mostly passes over the calibration photos (statistics for the
weight transforms, the calibrator, the range pass, the histograms, the debugger), and the
floor for any calibrated conversion is one float forward pass per photo. Recording each
pass with its photo count and time says which transform costs what, against that floor,
in quantize.json and report.json (``conversion.passes``)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass
class PassLog:
    passes: list[dict[str, Any]] = field(default_factory=list)
    #: reports of the weight transforms that ran inside the passes (equalize.py), by name,
    #: for the callers that keep int8_from_keras's result tuple as it is
    transforms: dict[str, Any] = field(default_factory=dict)
    #: one float32 forward pass per photo, as the range pass's interpreter timed it
    floor_s_per_image: float | None = None

    @contextmanager
    def timed(self, name: str, images: int) -> Iterator[None]:
        """Time one pass of ``name`` over ``images`` photos (recorded even when it raises
        nothing else is recorded: a failed conversion has no report)."""
        t0 = time.perf_counter()
        yield
        self.passes.append({"pass": name, "images": int(images),
                            "seconds": round(time.perf_counter() - t0, 2)})

    def to_dict(self, floor_s_per_image: float | None = None,
                calibration_images: int = 0) -> dict[str, Any]:
        d: dict[str, Any] = {"passes": list(self.passes)}
        if floor_s_per_image is not None:
            floor = floor_s_per_image * calibration_images
            d["floor"] = {"what": "one float32 forward pass (LiteRT) per calibration photo",
                          "images": calibration_images, "seconds": round(floor, 2)}
        return _totals(d)


def with_pass(doc: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (a :meth:`PassLog.to_dict`) with a pass a later stage made over the
    calibration photos (its row names the stage), totals recomputed."""
    return _totals(dict(doc, passes=[*doc.get("passes", []), row]))


def _totals(d: dict[str, Any]) -> dict[str, Any]:
    rows = d["passes"]
    d["images_total"] = sum(p["images"] for p in rows)
    d["seconds_total"] = round(sum(p["seconds"] for p in rows), 2)
    floor = (d.get("floor") or {}).get("seconds")
    if floor is not None:
        d["passes_over_floor"] = round(d["seconds_total"] / floor, 2) if floor > 0 else None
    return d

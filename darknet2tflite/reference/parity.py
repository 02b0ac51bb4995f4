"""Float32 parity against an independent reference.

Max relative error is max|diff| / max|ref| per head: a head's largest logit sets the scale
that matters for decoding, and the product's 1e-5 parity target is stated in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PARITY_TOLERANCE = 1e-5


@dataclass
class HeadParity:
    head: int
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float

    def as_dict(self) -> dict:
        return {"head": self.head, "shape": list(self.shape), "max_abs": self.max_abs,
                "max_rel": self.max_rel}


def compare_heads(ref: list[np.ndarray], got: list[np.ndarray]) -> list[HeadParity]:
    if len(ref) != len(got):
        raise ValueError(f"reference has {len(ref)} heads, model has {len(got)}")
    out = []
    for i, (r, g) in enumerate(zip(ref, got)):
        if r.shape != g.shape:
            raise ValueError(f"head {i}: reference shape {r.shape} != model shape {g.shape}")
        diff = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64))))
        scale = float(np.max(np.abs(r)))
        out.append(HeadParity(i, tuple(r.shape), diff, diff / scale if scale > 0 else diff))
    return out


def worst(rows: list[HeadParity]) -> float:
    return max(r.max_rel for r in rows)

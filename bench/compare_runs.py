"""Are two conversions the same product?  ``python bench/compare_runs.py OUT_A OUT_B``

Compares two ``convert --out`` folders made from the same inputs: the sha256 of every
.tflite (byte-identical, or the difference is named) and every figure of report.json except
the ones that measure this host's speed or memory (latency, seconds, RSS, speedups), which
differ from run to run, and the size of model.keras (a Keras archive records its save date and
object ids, so it is never byte-stable).  Exit status 0 when they agree, 1 otherwise (differences printed).
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

#: report.json keys whose values are timings or memory of the machine that ran the conversion
HOST_DEPENDENT = re.compile(r"latency|seconds|memory|rss|speedup|created|peak|_ms$|time")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if HOST_DEPENDENT.search(str(k).lower()) or str(k).endswith(".keras"):
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'B' if k not in a else 'A'}")
            else:
                _diff(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if isinstance(x, dict) and HOST_DEPENDENT.search(str(x.get("name", "")).lower()):
                continue  # e.g. a target row "int8 conversion seconds"
            _diff(x, y, f"{where}[{i}]", out)
    elif a != b:
        out.append(f"{where}: {a!r} != {b!r}")


def compare(a: Path, b: Path) -> list[str]:
    out: list[str] = []
    models = sorted({p.name for p in a.glob("*.tflite")} | {p.name for p in b.glob("*.tflite")})
    for name in models:
        if not (a / name).is_file() or not (b / name).is_file():
            out.append(f"{name}: only in {'A' if (a / name).is_file() else 'B'}")
        elif _sha(a / name) != _sha(b / name):
            out.append(f"{name}: sha256 {_sha(a / name)} != {_sha(b / name)}")
    ra, rb = (json.loads((d / "report.json").read_text(encoding="utf-8")) for d in (a, b))
    _diff(ra, rb, "report.json", out)
    return out


def main(argv: list[str]) -> int:
    a, b = Path(argv[0]), Path(argv[1])
    diffs = compare(a, b)
    for name in sorted(p.name for p in a.glob("*.tflite")):
        print(f"{name} {_sha(a / name)}")
    print("\n".join(diffs) if diffs else "same models, same report figures")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The probe's verdicts per layer and target, and their JSON / Markdown forms."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


OK, DEGRADED, UNSUPPORTED = "ok", "degraded", "unsupported"
_SEVERITY = {OK: 0, DEGRADED: 1, UNSUPPORTED: 2}


# --------------------------------------------------------------------------- report types

@dataclass
class TargetResult:
    status: str
    ops: list[str]
    reason: str = ""
    offending: list[str] = field(default_factory=list)  # op names to blame, if any
    sqnr_db: float | None = None


@dataclass
class ProbeRow:
    index: int
    section: str
    activation: str
    signature: str
    rules: list[str]
    results: dict[str, TargetResult]

    def status(self, target: str | None = None) -> str:
        ts = [target] if target else list(self.results)
        return max((self.results[t].status for t in ts), key=_SEVERITY.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "section": self.section, "activation": self.activation,
                "signature": self.signature, "rules": list(self.rules),
                "status": self.status(),
                "targets": {t: asdict(r) for t, r in self.results.items()}}


@dataclass
class ProbeReport:
    cfg: str
    targets: list[str]
    rules: list[str]
    rows: list[ProbeRow]
    n_signatures: int
    n_conversions: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def unsupported(self, target: str | None = None, include_degraded: bool = True
                    ) -> list[ProbeRow]:
        """Rows that are not fine for ``target`` (all targets if None). Degraded rows
        (converts, but int8 output is noise) count unless ``include_degraded`` is False."""
        worst = DEGRADED if include_degraded else UNSUPPORTED
        return [r for r in self.rows if _SEVERITY[r.status(target)] >= _SEVERITY[worst]]

    @property
    def ok(self) -> bool:
        return not self.unsupported()

    def to_dict(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "targets": self.targets, "rules": self.rules,
                "n_layers": len(self.rows), "n_signatures": self.n_signatures,
                "n_conversions": self.n_conversions, "seconds": round(self.seconds, 3),
                "ok": self.ok, "rows": [r.to_dict() for r in self.rows], **self.extra}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_json_default)

    def to_markdown(self) -> str:
        head = ["layer", "section", "activation", "TFLite ops", *self.targets, "reason"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            first = r.results[self.targets[0]]
            reasons = "; ".join(f"{t}: {r.results[t].reason}" if len(self.targets) > 1
                                else r.results[t].reason
                                for t in self.targets if r.results[t].reason)
            if r.rules:
                reasons = (reasons + "; " if reasons else "") + "rewritten by " + \
                    ", ".join(r.rules)
            cells = [str(r.index), r.section, r.activation, _compact_ops(first.ops) or "-",
                     *[r.results[t].status for t in self.targets], reasons]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _compact_ops(ops: list[str]) -> str:
    out: list[str] = []
    for op in ops:
        if out and out[-1].split("×")[0] == op:
            base, _, n = out[-1].partition("×")
            out[-1] = f"{base}×{int(n or 1) + 1}"
        else:
            out.append(op)
    return ", ".join(out)

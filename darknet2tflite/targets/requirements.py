"""Can the requested targets be met? Decided from the op probe, before quantization starts.

The probe (with the targets' own tools) has already chosen every exact rule that helps and
the approximate ones the user allowed; what is still unsupported on a target cannot run
there, so spending minutes on calibration would only produce a model the device refuses."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from . import TargetError, target_list
from .probe_hook import CPU_FALLBACK


def unmet(probe_doc: Mapping[str, Any], targets: str | Sequence[str], npu_only: bool = False
          ) -> str | None:
    """One line naming the first target that cannot be met, its layers and ops, else None."""
    after = probe_doc.get("after") or {}
    rows = after.get("rows") or []
    unfixed = {u["layer"]: u for u in after.get("unfixed") or []}
    for name in target_list(targets):
        bad: dict[tuple[str, str], list[int]] = {}
        hint: set[str] = set()
        for row in rows:
            res = (row.get("targets") or {}).get(name) or \
                (row.get("targets") or {}).get("int8" if name == "cpu" else name)
            if not res:
                continue
            fallback = npu_only and res["status"] == "degraded" and \
                CPU_FALLBACK in (res.get("reason") or "")
            if res["status"] != "unsupported" and not fallback:
                continue
            act = f" {row['activation']}" if row.get("activation") not in (None, "-") else ""
            ops = ", ".join(res.get("offending") or []) or "-"
            bad.setdefault((f"[{row['section']}]{act}", ops), []).append(row["index"])
            hint.update((unfixed.get(row["index"]) or {}).get("opt_in_not_allowed") or [])
        if bad:
            parts = [f"layer{'s' if len(ls) > 1 else ''} {', '.join(map(str, ls))} {what} "
                     f"(ops {ops})" for (what, ops), ls in bad.items()]
            why = "CPU fallback refused by --npu-only" if npu_only and name.startswith(
                "ethos-u") else "no exact rewrite fixes it"
            msg = f"target {name} cannot be met: {'; '.join(parts)}: {why}"
            if hint:
                msg += f"; allow the approximate rule with --allow-approximate " \
                       f"{','.join(sorted(hint))}"
            return msg
    return None


def check_met(probe_doc: Mapping[str, Any], targets: str | Sequence[str],
              npu_only: bool = False) -> None:
    msg = unmet(probe_doc, targets, npu_only)
    if msg:
        raise TargetError(msg)


def check_allowed(names: Sequence[str]) -> list[str]:
    """``--allow-approximate`` names must be registered opt-in rules."""
    from ..rewrites import load_rules
    rules = load_rules()
    opt = sorted(n for n, r in rules.items() if r.opt_in and n != "head_split")
    bad = [n for n in names if n not in opt]
    if bad:
        raise TargetError(f"--allow-approximate {','.join(bad)}: not an opt-in rewrite rule "
                          f"(choose from {', '.join(opt)})")
    return list(names)

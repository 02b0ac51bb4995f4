"""The report's ``deployment`` section: one entry per requested target, and its table."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from . import get_target, is_legacy_profile, target_list


def _cpu_accuracy(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    ev = evaluation.get("evaluation") or evaluation
    acc: dict[str, Any] = {"arithmetic": "xnnpack"}
    heads = (ev.get("heads") or {}).get("int8") or []
    if heads:
        acc["min_head_sqnr_db"] = min(h["sqnr_db"] for h in heads)
        acc["min_head_cosine"] = min(h["cosine"] for h in heads)
    ap = (ev.get("ap") or {}).get("int8")
    if ap:
        acc.update(AP=ap.get("AP"), AP50=ap.get("AP50"))
    acc["images"] = len(ev.get("images") or [])
    return acc


def deployment(targets: str | Sequence[str], evaluation: Mapping[str, Any],
               verify: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    by_name = {r["target"]: r for r in (verify or {}).get("targets", [])}
    ref_acc = (verify or {}).get("accuracy_reference")
    out = []
    for name in target_list(targets):
        if is_legacy_profile(name):  # a probe profile without a device: nothing deployed
            continue
        t = get_target(name)
        if t.name == "cpu":
            out.append({"target": "cpu", "runs": True, "tool": t.tool(),
                        "arithmetic": t.arithmetic, "accuracy": _cpu_accuracy(evaluation)})
            continue
        r = dict(by_name.get(t.name) or {"target": t.name, "runs": False,
                                         "reason": "not verified", "tool": t.tool(),
                                         "arithmetic": t.arithmetic})
        if r.get("runs") and ref_acc:
            r["accuracy"] = ref_acc
        out.append(r)
    return out


def _f(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else (format(v, spec) if isinstance(v, float) else str(v))


def rows(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One table row per target (report.md and the Prefect UI artifact)."""
    out = []
    for e in entries:
        acc = e.get("accuracy") or {}
        if e["target"] == "cpu":
            check = "LiteRT runs it (evaluate stage)"
        elif e["target"] == "tflm":
            check = (f"max {e['max_step_difference']} int8 step(s) from reference kernels "
                     f"on {e.get('images')} images; arena {e['arena_bytes'] / 1024:.1f} KiB"
                     if e.get("runs") and "arena_bytes" in e else e.get("reason", "-"))
            fd = e.get("first_divergence")
            if fd:
                check += (f" (first divergence: {fd['op']} of layer {fd['layer']}, "
                          f"{fd['max_step_difference']} step on "
                          f"{100 * fd['fraction_differing']:.4f} % of its elements, "
                          "amplified by the layers after it)")
        else:
            if e.get("runs"):
                cpu = e.get("cpu_ops") or []
                layers = sorted({i for c in cpu for i in c.get("layers", [])})
                check = (f"{e['ops_npu']}/{e['ops_total']} ops on the NPU"
                         + (f" ({e['ops_cpu']} on the CPU: layers "
                            f"{', '.join(map(str, layers)) or '?'})" if cpu else "")
                         + f"; SRAM {_f(e.get('sram_kib'), '.1f')} KiB, flash "
                           f"{_f(e.get('flash_kib'), '.1f')} KiB; {_f(e.get('inference_ms'), '.2f')}"
                           f" ms ({_f(e.get('cycles'))} cycles)")
            else:
                check = e.get("reason", "-")
        if "AP" in acc:
            score = f"AP {_f(acc['AP'])}, AP50 {_f(acc['AP50'])}"
        elif "min_head_sqnr_db" in acc:
            score = f"min head SQNR {_f(acc['min_head_sqnr_db'])} dB vs float"
        else:
            score = "-"
        out.append({"target": e["target"], "runs": "yes" if e.get("runs") else "NO",
                    "tool": f"{e['tool']['name']} {e['tool']['version']}",
                    "arithmetic": e.get("arithmetic", "-"), "check": check,
                    "accuracy": f"{score} ({acc.get('images', '?')} images)" if acc else "-"})
    return out


def markdown(entries: Sequence[Mapping[str, Any]]) -> str:
    rs = rows(entries)
    if not rs:
        return ""
    head = list(rs[0])
    L = ["## Deployment", "",
         "Each target checked by its own tool; accuracy with the arithmetic the target runs "
         "(xnnpack: LiteRT default; reference: TFLite reference kernels, as TFLite Micro and "
         "Ethos-U compute).", "",
         "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rs:
        L.append("| " + " | ".join(str(r[k]).replace("|", "\\|") for k in head) + " |")
    return "\n".join(L) + "\n"

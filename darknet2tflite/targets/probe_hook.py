"""The op probe's question to a target's own tool, as probe findings.

A layer the tool refuses is ``unsupported`` (that is what a missing kernel means on the
device); a layer an NPU compiler leaves (partly) to the CPU is ``degraded``, so the rewrite
search looks for a rule that keeps it on the NPU, and ``--npu-only`` can refuse it."""
from __future__ import annotations

import re
from typing import Iterator

from . import layer_check

CPU_FALLBACK = "CPU fallback"
_OPCODE = re.compile(r"opcode '([A-Z0-9_]+)'|Node ([A-Z0-9_]+) \(number")


def tool_verdict(profile_name: str, model: bytes) -> Iterator[tuple[str, str, list[str]]]:
    """(status, reason, ops to blame) findings of the tool behind ``profile_name``."""
    from darknet2tflite.probe.report import DEGRADED, UNSUPPORTED
    check = layer_check(profile_name)
    if check is None:
        return
    v = check(model)
    if v is None:
        return
    if not v.runs:
        yield (UNSUPPORTED, f"{profile_name}: {v.reason}",
               [a or b for a, b in _OPCODE.findall(v.reason)])
    elif v.cpu_ops:
        yield (DEGRADED, f"{CPU_FALLBACK} on {profile_name}: {', '.join(v.cpu_ops)} run on the "
               f"CPU ({v.reason})" if v.reason else
               f"{CPU_FALLBACK} on {profile_name}: {', '.join(v.cpu_ops)}", list(v.cpu_ops))

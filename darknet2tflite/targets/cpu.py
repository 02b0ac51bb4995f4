"""``cpu``: LiteRT's default interpreter (XNNPACK), today's desktop/phone behaviour.

Nothing to prove beyond what the evaluate stage already measures with this very interpreter
(AP, head SQNR, latency), so the probe adds no tool check and verify only points there."""
from __future__ import annotations

from typing import Any, Sequence

from . import LayerVerdict, TargetKind, register, tool_version


class CpuTarget:
    name = "cpu"
    profile = "int8"
    arithmetic = "xnnpack"

    def tool(self) -> dict[str, str]:
        return {"name": "ai-edge-litert", "version": tool_version("ai-edge-litert")}

    def probe_layer(self, model: bytes) -> LayerVerdict | None:
        return None  # the probe's own SQNR check already runs LiteRT on every layer

    def verify(self, model: bytes, inputs: Sequence[Any], out_dir: Any,
               reference: Sequence[Sequence[Any]] | None) -> dict[str, Any]:
        from darknet2tflite.tflite.interpreter import interpreter
        it = interpreter(bytes(model))
        return {"runs": True, "ops": len(it._get_ops_details()),
                "note": "evaluated by the evaluate stage (report 'evaluation')"}


register(TargetKind("cpu", names=lambda: ["cpu"], make=lambda n: CpuTarget(),
                    claims=lambda n: n == "cpu"))

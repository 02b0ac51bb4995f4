"""``ethos-u55-256`` and every other ``--accelerator-config`` Vela accepts: Arm Ethos-U NPUs.

Vela (``ethos-u-vela``) compiles the int8 model for the NPU: supported operators become
one ``ethos-u`` custom op, the rest stay TFLite ops the Cortex-M runs (TFLite Micro, with
the reference kernels' arithmetic). The probe compiles each layer's tiny int8 model and
records where its ops land; verify compiles the final model, keeps the compiled file
(delivered as ``model.<target>.tflite``) and reports NPU/CPU operators (CPU ones traced back
to Darknet layers), SRAM and flash use and Vela's cycle/time estimate. Vela runs with its
bundled ``Arm/vela.ini`` and the accelerator's default system config and memory mode
(both named in the report), exactly as ``vela --accelerator-config X model.tflite`` does.

The valid names come from Vela itself (``architecture_features.Accelerator``), so a Vela
upgrade that adds an NPU needs no change here."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from . import LayerVerdict, TargetKind, register, tool_version

VELA_TIMEOUT = 600
_WARN = re.compile(r"Warning \(supported operators\) operator: (\S+), ofm: '([^']*)'\s*\n"
                   r"Reason: ([^\n]*)")


@lru_cache(maxsize=1)
def accelerators() -> tuple[str, ...]:
    try:
        from ethosu.vela.architecture_features import Accelerator
    except ImportError:  # pragma: no cover - ethos-u-vela is a dependency
        return ()
    return tuple(a.value for a in Accelerator)


def _summary_value(text: str, label: str) -> str | None:
    m = re.search(rf"^{re.escape(label)}\s+(.+?)\s*$", text, re.M)
    return m.group(1) if m else None


def op_table(model: bytes) -> list[tuple[str, list[str]]]:
    """(op name, output tensor names) of subgraph 0; the ``ethos-u`` custom op named so."""
    from tensorflow.lite.python import schema_py_generated as schema
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(model), 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    sg = m.subgraphs[0]
    out = []
    for op in sg.operators or []:
        code = m.operatorCodes[op.opcodeIndex]
        b = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = names.get(b, str(b))
        if name == "CUSTOM":
            cc = code.customCode
            name = (cc.decode() if isinstance(cc, bytes) else str(cc)) or "CUSTOM"
        tnames = [sg.tensors[i].name for i in (op.outputs if op.outputs is not None else [])
                  if i >= 0]
        out.append((name, [t.decode() if isinstance(t, bytes) else str(t) for t in tnames]))
    return out


def compile_model(model: bytes, accelerator: str, out_dir: Path) -> dict[str, Any]:
    """Run Vela; the compiled flatbuffer, its summary CSV row and the console summary."""
    out_dir = Path(out_dir)
    src = out_dir / "network.tflite"
    src.write_bytes(bytes(model))
    cmd = [sys.executable, "-m", "ethosu.vela", str(src), "--accelerator-config", accelerator,
           "--output-dir", str(out_dir / "vela"), "--show-cpu-operations"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=VELA_TIMEOUT)
    seconds = time.perf_counter() - t0
    text = proc.stdout + "\n" + proc.stderr
    compiled = out_dir / "vela" / "network_vela.tflite"
    if proc.returncode != 0 or not compiled.is_file():
        lines = [ln.strip() for ln in text.splitlines()
                 if ln.strip() and not ln.startswith("Warning: No ")]
        why = next((ln for ln in reversed(lines) if "rror" in ln), lines[-1] if lines else
                   f"exit status {proc.returncode}")
        return {"ok": False, "reason": f"Vela failed: {why[:300]}", "seconds": seconds}
    summary: dict[str, str] = {}
    for f in (out_dir / "vela").glob("network_summary_*.csv"):
        with f.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if rows:
            summary = rows[-1]
    reasons = {ofm: (op, why) for op, ofm, why in _WARN.findall(text)}
    return {"ok": True, "compiled": compiled, "summary": summary, "stdout": text,
            "reasons": reasons, "seconds": seconds,
            "system_config": _summary_value(text, "System configuration"),
            "memory_mode": _summary_value(text, "Memory mode")}


def placement(model: bytes, compiled: bytes) -> tuple[int, list[tuple[str, list[str]]]]:
    """(TFLite operators of the input model, CPU operators left in the compiled one)."""
    before = op_table(model)
    cpu = [(n, outs) for n, outs in op_table(compiled) if n != "ethos-u"]
    return len(before), cpu


def _kib(summary: dict[str, str], key: str) -> float | None:
    try:
        return round(float(summary[key]), 2)
    except (KeyError, ValueError):
        return None


class EthosUTarget:
    profile = "int8"
    arithmetic = "reference"

    def __init__(self, name: str) -> None:
        self.name = name

    def tool(self) -> dict[str, str]:
        return {"name": "ethos-u-vela", "version": tool_version("ethos-u-vela")}

    def probe_layer(self, model: bytes) -> LayerVerdict:
        with tempfile.TemporaryDirectory(prefix="d2t-vela-") as tmp:
            res = compile_model(model, self.name, Path(tmp))
            if not res["ok"]:
                return LayerVerdict(False, res["reason"])
            _, cpu = placement(model, res["compiled"].read_bytes())
        from darknet2tflite.tflite.interpreter import interpreter

        from ._runtime import captured_stderr, first_reason
        with captured_stderr() as lines:  # the CPU side and the accuracy run need these
            try:
                interpreter(model, threads=None, kernels="reference")
            except (RuntimeError, ValueError) as e:
                return LayerVerdict(False, "the reference kernels refuse it: "
                                    + first_reason(lines or str(e).splitlines(), str(e)))
        ops = [n for n, _ in cpu if n not in ("QUANTIZE", "DEQUANTIZE")] or \
            [n for n, _ in cpu]
        why = "; ".join(f"{op}: {r}" for op, r in
                        {v[0]: v[1] for v in res["reasons"].values()}.items())
        return LayerVerdict(True, why, cpu_ops=ops)

    def verify(self, model: bytes, inputs: Sequence[Any], out_dir: Any,
               reference: Sequence[Sequence[Any]] | None, *,
               output_layers: dict[str, int] | None = None) -> dict[str, Any]:
        from darknet2tflite.tflite.names import layer_of_tensor
        out = Path(out_dir)
        with tempfile.TemporaryDirectory(prefix="d2t-vela-", dir=out) as tmp:
            res = compile_model(model, self.name, Path(tmp))
            if not res["ok"]:
                return {"runs": False, "reason": res["reason"],
                        "seconds_compile": round(res["seconds"], 2)}
            compiled = res["compiled"].read_bytes()
        dest = out / f"model.{self.name}.tflite"
        dest.write_bytes(compiled)
        n_ops, cpu = placement(model, compiled)
        s = res["summary"]
        cpu_rows = []
        for op, outs in cpu:
            layers = sorted({i for t in outs
                             if (i := layer_of_tensor(t, output_layers)) is not None})
            why = next((res["reasons"][t][1] for t in outs if t in res["reasons"]), "")
            cpu_rows.append({"op": op, "tensors": outs, "layers": layers, "reason": why})
        doc: dict[str, Any] = {
            "runs": True, "compiled": dest.name,
            "ops_total": n_ops, "ops_npu": n_ops - len(cpu), "ops_cpu": len(cpu),
            "cpu_ops": cpu_rows,
            "accelerator": s.get("accelerator_configuration"),
            "system_config": res["system_config"], "memory_mode": res["memory_mode"],
            "config_file": "Arm/vela.ini (bundled with Vela)",
            "sram_kib": _kib(s, "sram_memory_used"), "dram_kib": _kib(s, "dram_memory_used"),
            "flash_kib": round((_kib(s, "off_chip_flash_memory_used") or 0.0)
                               + (_kib(s, "on_chip_flash_memory_used") or 0.0), 2),
            "cycles": _int(s.get("cycles_total")),
            "inference_ms": _ms(s.get("inference_time")),
            "clock_hz": _int(s.get("core_clock")),
            "seconds_compile": round(res["seconds"], 2),
        }
        return doc


def _int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _ms(v: Any) -> float | None:
    try:
        return round(1000.0 * float(v), 3)
    except (TypeError, ValueError):
        return None


register(TargetKind("ethos-u", names=lambda: list(accelerators()), make=EthosUTarget,
                    claims=lambda n: n in accelerators()))

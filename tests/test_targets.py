"""Deployment targets: models converted for TFLite Micro and an Ethos-U NPU and
proven by the targets' own tools (the tflite-micro interpreter, Vela), a target that cannot
be met refused before quantization, and the probe's tflm op list checked against TFLite
Micro itself on every layer signature of every cfg in cfg/.

The two real conversions (yolov4-tiny, yolov3-tiny; the 8 sample photos to calibrate, 4 COCO
photos with annotations to evaluate) are session fixtures shared by the tests."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import flows  # noqa: F401  (Prefect env defaults)

from conftest import CFG_DIR, shared_path

TARGETS = "tflm,ethos-u55-256"
EVAL_PHOTOS = 4
MISH_BODY = "\n[convolutional]\nbatch_normalize=1\nfilters=32\nsize=3\nstride=1\npad=1\n" \
            "activation=mish\n"


@pytest.fixture(scope="session")
def twork(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("targets")


@pytest.fixture(scope="session")
def coco8(twork) -> tuple[Path, Path]:
    """A few annotated COCO photos to evaluate on (the calibration photos are the samples)."""
    coco = shared_path("images", "coco")
    ev = twork / "eval"
    ev.mkdir()
    for p in sorted(coco.glob("*.jpg"))[:EVAL_PHOTOS]:
        shutil.copyfile(p, ev / p.name)
    return ev, coco / "instances.json"


def run_flow(params: dict):
    from flows.convert import convert
    return convert(**params, return_state=True)


@pytest.fixture(scope="session")
def converted(prefect_server, twork, coco8, yolov4_tiny, yolov3_tiny) -> dict[str, Path]:
    """Both tiny models converted once for tflm + ethos-u55-256 through the real flow."""
    ev, ann = coco8
    samples = shared_path("images", "samples")
    outs = {}
    for name, (cfg, weights) in (("yolov4-tiny", yolov4_tiny), ("yolov3-tiny", yolov3_tiny)):
        out = twork / f"out-{name}"
        state = run_flow(dict(cfg=str(cfg), weights=str(weights), out=str(out),
                              calibration=str(samples), eval_images=str(ev),
                              eval_annotations=str(ann), names=str(CFG_DIR / "coco.names"),
                              store=str(twork / "store"), target=TARGETS, name=name,
                              calibration_mirror=0))
        assert state.is_completed(), state.message
        outs[name] = out
    return outs


def _deployment(out: Path) -> dict[str, dict]:
    report = json.loads((out / "report.json").read_text())
    return {e["target"]: e for e in report["deployment"]}


@pytest.mark.parametrize("model", ["yolov4-tiny", "yolov3-tiny"])
def test_converted_model_runs_in_tflite_micro_like_the_reference_kernels(converted, model):
    out = converted[model]
    tflm = _deployment(out)["tflm"]
    assert tflm["runs"] is True
    assert tflm["tool"]["name"] == "tflite-micro" and tflm["tool"]["version"]
    assert tflm["images"] == EVAL_PHOTOS and tflm["max_step_difference"] >= 0
    if tflm["max_step_difference"] > 1:
        # TFLite Micro's kernels round like the reference kernels to within 1 step: the first
        # op that differs (all its inputs still identical) differs by at most 1 step; later
        # layers amplify that, which the end-to-end figure reports
        first = tflm["first_divergence"]
        assert first["max_step_difference"] <= 1 and first["op"] and first["fraction_differing"] < 0.01
    # the reported arena is the smallest that works: TFLite Micro itself agrees
    from darknet2tflite.targets.tflm import load
    data = (out / "model.int8.tflite").read_bytes()
    it, why = load(data, tflm["arena_bytes"])
    assert it is not None, why
    x = np.zeros(it.get_input_details(0)["shape"], it.get_input_details(0)["dtype"])
    it.set_input(x, 0)
    it.invoke()
    from darknet2tflite.targets.tflm import ARENA_STEP
    assert load(data, tflm["arena_bytes"] - ARENA_STEP)[0] is None
    # TFLite Micro has no TILE: the exact upsample rewrite was chosen for this target
    report = json.loads((out / "report.json").read_text())
    assert "upsample" in [r["name"] for r in report["pipeline"]["rewrites"]]


@pytest.mark.parametrize("model", ["yolov4-tiny", "yolov3-tiny"])
def test_converted_model_runs_entirely_on_the_npu(converted, model):
    out = converted[model]
    npu = _deployment(out)["ethos-u55-256"]
    assert npu["runs"] is True and npu["tool"] == {"name": "ethos-u-vela", "version": "5.2.0"}
    assert npu["ops_total"] > 20 and npu["ops_npu"] == npu["ops_total"] and npu["ops_cpu"] == 0
    assert npu["sram_kib"] > 0 and npu["flash_kib"] > 0 and npu["cycles"] > 0
    assert npu["inference_ms"] > 0 and npu["system_config"] and npu["memory_mode"]
    from darknet2tflite.targets.ethos_u import op_table
    compiled = [op for op, _ in op_table((out / "model.ethos-u55-256.tflite").read_bytes())]
    assert compiled and set(compiled) == {"ethos-u"}
    probe = json.loads((out / "report.json").read_text())["pipeline"]["probe"]
    assert probe["ok_after"] is True and probe["target"] == TARGETS


@pytest.mark.parametrize("model", ["yolov4-tiny", "yolov3-tiny"])
def test_accuracy_reported_with_the_targets_arithmetic(converted, model):
    out = converted[model]
    dep = _deployment(out)
    for name in ("tflm", "ethos-u55-256"):
        acc = dep[name]["accuracy"]
        assert acc["arithmetic"] == "reference" and acc["images"] == EVAL_PHOTOS
        assert 0 < acc["AP50"] <= 100 and 0 < acc["AP"] <= acc["AP50"]
        assert 0 < acc["xnnpack"]["AP50"] <= 100
    md = (out / "report.md").read_text()
    table = md[md.index("## Deployment"):]
    for name in ("tflm", "ethos-u55-256"):
        assert f"| {name} | yes |" in table
    assert "ops on the NPU" in table and "int8 step(s) from reference kernels" in table


@pytest.fixture(scope="session")
def mish_model(twork) -> tuple[Path, Path]:
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.darknet.weights import random_weights, write_weights
    from test_rewrites import cfg_text
    cfg = twork / "mish.cfg"
    cfg.write_text(cfg_text(MISH_BODY))
    weights = twork / "mish.weights"
    write_weights(weights, parse_cfg(cfg), random_weights(parse_cfg(cfg), 3))
    return cfg, weights


def _mish_params(mish_model, twork, **kw) -> dict:
    cfg, weights = mish_model
    return dict(cfg=str(cfg), weights=str(weights), out=str(twork / "out-mish"),
                calibration=str(shared_path("images", "samples")),
                store=str(twork / "store"), target="tflm", **kw)


def test_a_target_that_cannot_be_met_is_refused_before_quantization(prefect_server, twork,
                                                                    mish_model):
    from darknet2tflite.errors import UserError
    from tasks._common import PRODUCED
    before = len(PRODUCED)
    state = run_flow(_mish_params(mish_model, twork))
    assert state.is_failed()
    with pytest.raises(UserError) as e:
        state.result()
    msg = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in msg
    assert msg.startswith("target tflm cannot be met: layer 1 [convolutional] mish (ops ")
    assert "EXP" in msg or "LOG" in msg
    assert "--allow-approximate mish_poly" in msg
    ran = {s for s, _ in PRODUCED[before:]}
    assert "quantize" not in ran and "probe" in ran
    assert not (twork / "out-mish").exists()


def test_the_approximate_rule_allowed_converts_and_reports_its_deviation(prefect_server, twork,
                                                                          mish_model):
    state = run_flow(_mish_params(mish_model, twork, allow_approximate="mish_poly"))
    assert state.is_completed(), state.message
    out = twork / "out-mish"
    report = json.loads((out / "report.json").read_text())
    rw = {r["name"]: r for r in report["pipeline"]["rewrites"]}
    assert rw["mish_poly"]["exact"] is False and rw["mish_poly"]["layers"] == [1]
    assert 0 < rw["mish_poly"]["max_abs"] < 0.05  # the fit's 0.0086 through one more conv
    assert _deployment(out)["tflm"]["runs"] is True
    assert "APPROXIMATE" in (out / "report.md").read_text()


def _cfgs() -> list[Path]:
    return sorted(CFG_DIR.glob("*.cfg"))


@pytest.mark.parametrize("cfg_path", _cfgs(), ids=lambda p: p.stem)
def test_probe_tflm_verdict_agrees_with_tflite_micro(cfg_path):
    """The hand-kept tflm op list (the probe's fast first filter, tools off) against the
    real interpreter, per layer signature, plain and with every default rewrite rule."""
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.probe.report import UNSUPPORTED
    from darknet2tflite.probe.prober import Prober
    from darknet2tflite.probe.profiles import load_profile
    from darknet2tflite.probe.signatures import signature
    from darknet2tflite.rewrites import load_rules
    from darknet2tflite.targets.tflm import TflmTarget

    class Recording(Prober):
        def _convert(self, model, profile):
            self.last = super()._convert(model, profile)
            return self.last

        def check(self, model, sec, profile, baseline=()):
            self.last = None
            res = super().check(model, sec, profile, baseline)
            self.seen[signature(sec, self.rules, self.cfg)] = (self.last, res)
            return res

    cfg = parse_cfg(cfg_path)
    profile, tool = load_profile("tflm"), TflmTarget()
    defaults = [r for r in load_rules().values() if not r.opt_in]
    checked, refused = 0, 0
    for rules in ([], defaults):
        prober = Recording(cfg, None, tools=False)
        prober.seen, prober.rules = {}, rules
        prober.probe([profile], rules)
        for sig, (data, res) in prober.seen.items():
            if data is None:  # the converter refused it: nothing to run
                continue
            listed_refusal = res.status == UNSUPPORTED and any(
                k in res.reason for k in ("op set", "float32-only", "kernel takes"))
            verdict = tool.probe_layer(data)
            assert verdict.runs == (not listed_refusal), (sig, res.reason, verdict.reason)
            checked += 1
            refused += not verdict.runs
    assert checked >= 10 and refused >= 1  # TILE ([upsample]) at least, before rewriting


def test_cli_target_errors_are_one_line(capsys):
    from cli.main import main
    cfg, weights = CFG_DIR / "yolov4-tiny.cfg", CFG_DIR / "yolov4-tiny.cfg"
    args = ["convert", str(cfg), str(weights), "--out", "/tmp/never", "--calibration",
            str(CFG_DIR)]
    assert main(args + ["--target", "tflm,ethos-u99-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown target 'ethos-u99-1'" in err[0] and "ethos-u55-256" in err[0]
    assert main(args + ["--target", "tflm", "--npu-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--npu-only needs an Ethos-U target" in err[0]


def test_targets_are_flow_deployment_and_batch_parameters():
    """The convert deployment's parameters are the flow's (Prefect builds its schema the same
    way); a batch manifest entry may set them per model."""
    from prefect.utilities.callables import parameter_schema

    from flows.batch import MODEL_KEYS
    from flows.convert import convert
    from flows.deployments import build_deployments
    assert "convert" in [d.name for d in build_deployments()]
    props = parameter_schema(convert).properties
    assert props["target"]["default"] == "cpu"
    assert {"allow_approximate", "npu_only"} <= set(props)
    assert {"target", "allow_approximate", "npu_only"} <= set(MODEL_KEYS)


def test_npu_cpu_fallback_is_reported_refused_with_npu_only_and_avoided_by_rewrites(tmp_path):
    """Vela leaves [reorg]'s default lowering (GATHER) to the CPU: the probe says so per layer,
    --npu-only turns it into the one-line refusal, and the exact reorg rule, chosen because
    the target's own compiler prefers it, keeps the layer on the NPU."""
    from darknet2tflite.probe.prober import probe
    from darknet2tflite.probe.rules import probe_with_rewrites
    from darknet2tflite.targets import probe_profiles
    from darknet2tflite.targets.requirements import unmet
    from test_rewrites import cfg_text
    cfg = tmp_path / "reorg.cfg"
    cfg.write_text(cfg_text("\n[reorg]\nstride=2\n"))
    target = "ethos-u55-256"
    plain = probe(cfg, None, probe_profiles(target))
    res = plain.rows[1].results[target]
    assert plain.rows[1].section == "reorg" and res.status == "degraded"
    assert "CPU fallback on ethos-u55-256: GATHER" in res.reason and "GATHER" in res.offending
    doc = {"after": plain.to_dict()}
    assert unmet(doc, target) is None  # reported, not refused
    msg = unmet(doc, target, npu_only=True)
    assert msg == ("target ethos-u55-256 cannot be met: layer 1 [reorg] (ops GATHER): "
                   "CPU fallback refused by --npu-only")
    _, after, applied = probe_with_rewrites(cfg, None, probe_profiles(target))
    assert [a.name for a in applied] == ["reorg"] and after.ok
    assert unmet({"after": after.to_dict()}, target, npu_only=True) is None

"""The layer-by-layer op probe on real models, with real conversions (no mocks).

yolov4-tiny and yolov3-tiny with their official weights, yolov4 with
weights.random_weights (support does not depend on the values): probe before and after
automatic rewriting, everything int8-supported afterwards, and the whole rewritten model
converted to int8 has no float op anywhere between its input and its raw heads.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest

from darknet2tflite.darknet.cfg import parse_cfg
from darknet2tflite.errors import UserError
from darknet2tflite.probe.prober import EXACT_TOLERANCE, Prober, probe
from darknet2tflite.probe.report import OK
from darknet2tflite.probe.profiles import ProfileError, available_profiles, load_profile
from darknet2tflite.tflite.inspect import inspect_tflite
from darknet2tflite.probe.rules import load_images, probe_with_rewrites
from darknet2tflite.probe.signatures import signature
from darknet2tflite.probe.tiny import tiny_section
from darknet2tflite.rewrites import Rule, load_rules
from darknet2tflite.darknet.weights import random_weights

from test_rewrites import cfg_text

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CFG = REPO / "cfg"
SAMPLES = SHARED / "images" / "samples"
WEIGHTS = SHARED / "darknet" / "weights"


def need(p: Path) -> Path:
    if not p.exists():
        pytest.skip(f"shared test material missing: {p}")
    return p


def resized_cfg(src: Path, dst: Path, size: int) -> Path:
    """The same network at another input size (layers and weights do not change)."""
    text = src.read_text()
    for key in ("width", "height"):
        text = "\n".join(f"{key}={size}" if line.strip().startswith(f"{key}=") else line
                         for line in text.splitlines())
    dst.write_text(text + "\n")
    return dst


def convert_full_int8(cfg, weights, rules, images: np.ndarray) -> bytes:
    """The whole rewritten model, full-integer (uint8 input, int8 outputs)."""
    from darknet2tflite.model.builder import build_keras
    from darknet2tflite.tflite.export import convert
    from darknet2tflite.probe.prober import _quiet
    model, _ = build_keras(cfg, weights, rules)
    with _quiet():
        return convert(model, mode="int8",
                       representative=lambda: iter([[x[None]] for x in images]))


def assert_integer_only(data: bytes, n_heads: int) -> None:
    """Every op's tensors are integer; QUANTIZE only where it reads the model input;
    every output is the raw output of a CONV_2D (no decode after the heads)."""
    from darknet2tflite.tflite.interpreter import interpreter
    s = inspect_tflite(data, max_quant_scale=1e6)
    assert s.float_ops == [], s.float_ops
    assert s.large_scales == [] and s.dead_outputs == []
    for op in s.ops:
        assert not any(d.startswith("float") for d in op.inputs + op.outputs), op
    assert s.input_dtypes == ["uint8"] and s.output_dtypes == ["int8"] * n_heads
    it = interpreter(data, threads=None, kernels="builtin")
    inputs = {d["index"] for d in it.get_input_details()}
    outputs = {d["index"] for d in it.get_output_details()}
    producer = {}
    for od in it._get_ops_details():
        for o in od["outputs"]:
            producer[int(o)] = od["op_name"]
        if od["op_name"] == "QUANTIZE":
            src = {int(i) for i in od["inputs"]}
            tensors = {t["index"]: t for t in it.get_tensor_details()}
            # at the input edge (uint8 -> int8) or an int8 -> int8 requantization
            assert src <= inputs or all(np.dtype(tensors[i]["dtype"]) == np.int8 for i in src)
    assert sorted(producer[o] for o in outputs) == ["CONV_2D"] * n_heads


# --------------------------------------------------------------------------- profiles

def test_profiles_are_data_with_sources():
    assert {"int8", "float", "tflm"} <= set(available_profiles())
    int8, flt, tflm = (load_profile(n) for n in ("int8", "float", "tflm"))
    assert int8.converter == "int8" and int8.require_integer and int8.allowed_ops is None
    assert flt.converter == "float" and not flt.require_integer
    assert tflm.converter == "int8" and tflm.require_integer
    assert "933f830139560b2f9a47b5418439350c728a796f" in tflm.source["url"]
    assert {"CONV_2D", "LEAKY_RELU", "STRIDED_SLICE", "MIRROR_PAD"} <= tflm.allowed_ops
    assert not {"SELECT", "SELECT_V2", "TILE", "SOFTPLUS"} & tflm.allowed_ops
    assert {"EXP", "LOG"} <= tflm.float_only_ops
    for p in (int8, flt, tflm):
        assert p.source.get("url") and p.source.get("version") and p.description
    # round trip through JSON (what a user-written profile looks like)
    assert load_profile(tflm) is tflm


def test_unknown_profile_is_a_one_line_user_error(tmp_path):
    with pytest.raises(ProfileError) as e:
        load_profile("edge-tpu-v9")
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert "int8" in str(e.value) and "tflm" in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "converter": "int4"}')
    with pytest.raises(ProfileError, match="converter must be"):
        load_profile(bad)


# --------------------------------------------------------------------------- signatures

@pytest.mark.parametrize("name", ["yolov4.cfg", "yolov4-tiny.cfg", "yolov3-tiny.cfg"])
def test_tiny_sections_keep_the_lowering(name):
    """The probe converts a small-spatial copy of each layer; it must lower the same way
    (same padding decisions, same matching rules) as the real one."""
    cfg = parse_cfg(CFG / name)
    rules = list(load_rules().values())
    for sec in cfg.layers:
        t = tiny_section(sec, rules)
        assert signature(t, rules) == signature(sec, rules), sec.index
        assert t.params["in_shapes"][0][0] <= 40, (sec.index, t.params["in_shapes"])
    n_sig = len({signature(s) for s in cfg.layers})
    assert n_sig <= 20
    if name == "yolov4.cfg":  # 162 layers, a handful of distinct lowerings
        assert n_sig * 8 < len(cfg.layers)


def test_tiny_partial_shortcuts_keep_which_input_is_wider(tmp_path):
    """Partial residual shortcuts (PRN: inputs of 40 and 80 channels, both beyond the
    probe's channel cap) keep their slice/concat lowering in the probe copy."""
    conv = "[convolutional]\nfilters={}\nsize=3\npad=1\nactivation=leaky\n\n"
    body = (conv.format(40) + conv.format(80) + "[shortcut]\nfrom=-2\n\n"
            + conv.format(40) + "[shortcut]\nfrom=-2\nactivation=leaky\n\n"
            + conv.format(40) + "[shortcut]\nfrom=-2\n\n"
            + "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n\n"
            "[yolo]\nmask=0\nanchors=4,4\nclasses=1\nnum=1\n")
    path = tmp_path / "prn.cfg"
    path.write_text("[net]\nwidth=64\nheight=64\nchannels=3\n\n" + body)
    cfg = parse_cfg(path)
    rules = list(load_rules().values())
    kinds = []
    for sec in (s for s in cfg.layers if s.kind == "shortcut"):
        t = tiny_section(sec, rules)
        assert signature(t, rules) == signature(sec, rules), sec.index
        kinds.append(signature(sec, rules)[1][1])
        (c, c_from), (tc, tc_from) = ([s[2] for s in x.params["in_shapes"]] for x in (sec, t))
        assert (tc > tc_from) == (c > c_from) and max(tc, tc_from) <= 32
    assert kinds == ["partial", "slice", "same"]


# --------------------------------------------------------------------------- real models

@pytest.fixture(scope="module")
def samples() -> Path:
    return need(SAMPLES)


@pytest.fixture(scope="module")
def v4tiny(samples):
    cfg = parse_cfg(CFG / "yolov4-tiny.cfg")
    weights = need(WEIGHTS / "yolov4-tiny.weights")
    t0 = time.perf_counter()
    before, after, applied = probe_with_rewrites(cfg, weights, "int8", images=samples)
    return cfg, weights, before, after, applied, time.perf_counter() - t0


@pytest.fixture(scope="module")
def v4():
    cfg = parse_cfg(CFG / "yolov4.cfg")
    weights = random_weights(cfg, 0)
    t0 = time.perf_counter()
    before, after, applied = probe_with_rewrites(cfg, weights, "int8")
    return cfg, weights, before, after, applied, time.perf_counter() - t0


@pytest.mark.slow
def test_yolov4_tiny_probe_and_rewrites(v4tiny, samples):
    cfg, weights, before, after, applied, seconds = v4tiny
    routes = [r.index for r in before.rows if r.section == "route"
              and cfg.layers[r.index].params["groups"] > 1]
    assert routes == [3, 11, 19]
    assert [r.index for r in before.unsupported()] == routes
    assert all("SPLIT" in before.rows[i].results["int8"].offending for i in routes)
    # one verdict whether or not this conversion left the SPLIT in float (the report and
    # `probe` once disagreed: "degraded" vs "unsupported")
    assert {before.rows[i].results["int8"].status for i in routes} == {"unsupported"}
    assert [a.name for a in applied] == ["route_groups"]
    assert applied[0].layers == routes and applied[0].max_rel == 0.0
    assert after.ok and all(after.rows[i].results["int8"].ops == ["STRIDED_SLICE"]
                            for i in routes)
    # heads: raw conv outputs, nothing after them
    for r in after.rows:
        if r.section == "yolo":
            assert r.results["int8"].ops == [] and r.status() == OK
    # one conversion per distinct signature, not per layer
    assert before.n_conversions == before.n_signatures < len(before.rows) / 3
    print(f"\nyolov4-tiny: {len(before.rows)} layers, {before.n_signatures} signatures, "
          f"probe {before.seconds:.1f} s, with rewrites+deviation {seconds:.1f} s")
    print(after.to_markdown())


@pytest.mark.slow
def test_yolov4_tiny_rewritten_converts_integer_only(v4tiny, samples):
    from darknet2tflite.probe.prober import _as_weights
    cfg, weights, _, _, applied, _ = v4tiny
    rules = [load_rules()[a.name] for a in applied]
    w = _as_weights(str(weights), cfg)
    data = convert_full_int8(cfg, w, rules, load_images(samples, cfg, limit=2))
    assert_integer_only(data, n_heads=2)
    assert "SPLIT" not in inspect_tflite(data).op_names


@pytest.mark.slow
def test_yolov3_tiny_maxpool_rewrite_and_integer_only(samples, tmp_path):
    from darknet2tflite.probe.prober import _as_weights
    cfg = parse_cfg(CFG / "yolov3-tiny.mask123.cfg")
    weights = _as_weights(need(WEIGHTS / "yolov3-tiny.weights"), cfg)
    before, after, applied = probe_with_rewrites(cfg, weights, "int8", images=samples)
    bad = before.unsupported()
    assert [r.index for r in bad] == [11]  # [maxpool] size=2 stride=1: -FLT_MAX pad
    assert "quantization-hostile constant -3.4e+38" in bad[0].results["int8"].reason
    assert [a.name for a in applied] == ["maxpool_pad"]
    assert applied[0].max_rel == 0.0 and after.ok
    assert after.rows[11].results["int8"].ops == ["MAX_POOL_2D"]  # TF 'SAME' pooling
    data = convert_full_int8(cfg, weights, [load_rules()["maxpool_pad"]],
                             load_images(samples, cfg, limit=2))
    assert_integer_only(data, n_heads=2)
    # and without the rule the whole model is wrecked the same way the probe predicted
    plain = convert_full_int8(cfg, weights, [], load_images(samples, cfg, limit=2))
    assert inspect_tflite(plain, max_quant_scale=1e6).large_scales


@pytest.mark.slow
def test_yolov4_probe_and_rewrites(v4):
    cfg, weights, before, after, applied, seconds = v4
    bad = before.unsupported()
    mish = [r.index for r in bad if r.activation == "mish"]
    pools = [r.index for r in bad if r.section == "maxpool"]
    assert pools == [108, 110, 112]
    assert len(mish) == sum(1 for s in cfg.layers if s.activation == "mish") == 72
    assert sorted(r.index for r in bad) == sorted(mish + pools)
    assert all("SQNR" in before.rows[i].results["int8"].reason for i in mish)
    assert {a.name for a in applied} == {"mish", "maxpool_pad"}
    assert after.ok, after.to_markdown()
    for i in mish:
        res = after.rows[i].results["int8"]
        assert "EXP" not in res.ops and res.sqnr_db and res.sqnr_db >= 30
    assert before.n_conversions == before.n_signatures <= 20
    print(f"\nyolov4: {len(before.rows)} layers, {before.n_signatures} signatures, "
          f"probe {before.seconds:.1f} s, with rewrites {seconds:.1f} s")


@pytest.mark.slow
def test_probe_cost_follows_signatures_not_depth(v4, v4tiny):
    """yolov4 has 4x the layers of yolov4-tiny but about the same number of distinct
    layer signatures, so its probe must cost well under 3x as much."""
    t4, ttiny = v4[2].seconds, v4tiny[2].seconds
    print(f"\nprobe time yolov4 {t4:.1f} s ({len(v4[2].rows)} layers), yolov4-tiny "
          f"{ttiny:.1f} s ({len(v4tiny[2].rows)} layers), ratio {t4 / ttiny:.2f}")
    assert t4 < 3 * ttiny


@pytest.mark.slow
def test_yolov4_rewritten_converts_integer_only(v4, samples, tmp_path):
    """At 160x160 (same layers and weights, much faster calibration): no float op, and
    the exact mish rule keeps the float heads within 1e-5 on real photos."""
    from darknet2tflite.probe.prober import _as_weights
    from darknet2tflite.probe.rules import deviation
    cfg = parse_cfg(resized_cfg(CFG / "yolov4.cfg", tmp_path / "yolov4-160.cfg", 160))
    weights = _as_weights(v4[1], cfg)
    rules = [load_rules()[a.name] for a in v4[4]]
    images = load_images(samples, cfg, limit=2)
    data = convert_full_int8(cfg, weights, rules, images)
    assert_integer_only(data, n_heads=3)
    mabs, mrel, _ = deviation(cfg, weights, rules, images)
    print(f"\nyolov4 (random weights, 160x160): all rules float max abs {mabs:.3g}, "
          f"max rel {mrel:.3g}")
    assert mrel <= EXACT_TOLERANCE


def test_float_target_accepts_the_darknet_lowering():
    """Float TFLite has no quantization ranges to wreck: -FLT_MAX pads, SPLIT and mish
    are fine there, so the probe reports nothing and no rule is chosen."""
    cfg = parse_cfg(CFG / "yolov3-tiny.cfg")
    rep = probe(cfg, None, "float")
    assert rep.ok and rep.targets == ["float"]
    assert rep.rows[11].results["float"].ops == ["PADV2", "MAX_POOL_2D"]


def test_several_targets_in_one_report():
    cfg = parse_cfg(CFG / "yolov3-tiny.cfg")
    rep = probe(cfg, None, ["float", "int8"])
    row = rep.rows[11]
    assert row.results["float"].status == OK and row.results["int8"].status != OK
    assert row.status() == row.status("int8") != OK
    assert [r.index for r in rep.unsupported("float")] == []
    assert [r.index for r in rep.unsupported("int8")] == [11]
    assert rep.n_conversions == 2 * rep.n_signatures


def test_report_json_and_markdown():
    cfg = parse_cfg(CFG / "yolov3-tiny.cfg")
    rep = probe(cfg, None, "int8")
    doc = json.loads(rep.to_json())
    assert doc["n_layers"] == len(cfg.layers) == len(doc["rows"])
    row = doc["rows"][11]
    assert row["section"] == "maxpool" and row["targets"]["int8"]["ops"] == ["PADV2",
                                                                             "MAX_POOL_2D"]
    assert row["targets"]["int8"]["status"] == "degraded" and not doc["ok"]
    md = rep.to_markdown().splitlines()
    assert md[0].startswith("| layer | section | activation | TFLite ops | int8 | reason")
    assert len(md) == 2 + len(cfg.layers)
    assert md[2 + 11].startswith("| 11 | maxpool | - | PADV2, MAX_POOL_2D | degraded |")


def test_decode_in_the_graph_is_reported(tmp_path):
    """Heads must be raw conv outputs. A (hypothetical) head rule that decodes inside
    the graph is caught by the probe, naming the op."""
    import keras

    def build(ctx, sec, ins):
        return [keras.layers.Activation("sigmoid", name=f"head_{sec.index:03d}_decoded")(ins[0])]

    decode = Rule(name="decode_in_graph", targets=frozenset({"head"}), exact=False,
                  opt_in=True, emits="LOGISTIC", description="test only",
                  matches=lambda sec, target: True, build=build)
    rep = probe(CFG / "yolov3-tiny.cfg", None, "int8", rules=[decode])
    heads = [r for r in rep.rows if r.section == "yolo"]
    assert heads and all(r.results["int8"].status == "unsupported" for r in heads)
    assert "decode op LOGISTIC after [yolo]" in heads[0].results["int8"].reason
    assert heads[0].results["int8"].offending == ["LOGISTIC"]


def test_head_rules_are_probed_with_their_conv():
    """A head rule (here the opt-in head_split of the int8 path) rebuilds the conv that
    feeds the head; the probe builds the head together with that conv, reports only
    what the rule adds, and still finds no decode op."""
    rules = load_rules()
    if "head_split" not in rules:
        pytest.skip("head_split rule not present")
    rep = probe(CFG / "yolov3-tiny.cfg", None, "int8", rules=[rules["head_split"]])
    heads = [r for r in rep.rows if r.section == "yolo"]
    for r in heads:
        res = r.results["int8"]
        assert r.rules == ["head_split"] and res.status == OK, res
        assert res.ops and set(res.ops) == {"CONV_2D"}


def test_probe_without_weights_only_makes_weights_for_probed_layers():
    """Cost follows signatures: one small conv weight set per conv signature, not 110
    full-size ones (yolov4 has 64M parameters)."""
    cfg = parse_cfg(CFG / "yolov4.cfg")
    prober = Prober(cfg)
    rep = prober.probe([load_profile("float")])
    convs = [s.index for s in cfg.layers if s.kind == "convolutional"]
    conv_sigs = {signature(s) for s in cfg.layers if s.kind == "convolutional"}
    assert prober.weights_made == len(conv_sigs) < len(convs) / 10
    assert rep.ok


# --------------------------------------------------------------------------- CLI

def _run_cli(argv: list[str]) -> int:
    from cli.probe import add_probe_parser
    ap = argparse.ArgumentParser(prog="darknet2tflite")
    add_probe_parser(ap.add_subparsers(dest="command"))
    args = ap.parse_args(argv)
    return args.func(args)


# a 3x3 mish conv between the leaky stem and the yolo head of test_rewrites' cfg template
MISH_CFG = cfg_text("\n[convolutional]\nbatch_normalize=1\nfilters=32\nsize=3\nstride=1\n"
                    "pad=1\nactivation=mish\n")


def _mish_cfg(tmp_path: Path) -> Path:
    p = tmp_path / "mish.cfg"
    p.write_text(MISH_CFG)
    return p


def test_cli_fixable_model_exits_zero(tmp_path, capsys):
    rc = _run_cli(["probe", str(_mish_cfg(tmp_path)), "--target", "int8"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "## before rewriting" in out and "## after rewriting" in out
    assert "- mish (exact): layers 1" in out
    assert "| 1 | convolutional | mish | CONV_2D, LOGISTIC" in out


def test_cli_unfixable_model_exits_nonzero_naming_layer_and_op(tmp_path, capsys):
    rc = _run_cli(["probe", str(_mish_cfg(tmp_path)), "--target", "tflm", "--json"])
    cap = capsys.readouterr()
    assert rc == 1
    doc = json.loads(cap.out)
    assert doc["after"]["ok"] is False and doc["rewrites"] == []
    assert doc["after"]["unfixed"][0]["tried"] == ["mish"]
    line = [ln for ln in cap.err.splitlines() if "unsupported on tflm" in ln]
    assert len(line) == 1 and "layer 1 [convolutional]" in line[0] and "op EXP, LOG" in line[0]


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from cli.main import main
    cfg = _mish_cfg(tmp_path)
    assert main(["probe", str(cfg), "--target", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown target profile 'nope'" in err[0]
    assert main(["probe", str(tmp_path / "missing.cfg")]) == 2
    assert main(["probe", str(cfg), "--allow", "nope"]) == 2
    assert "unknown rewrite rule" in capsys.readouterr().err

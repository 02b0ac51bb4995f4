"""The option table (darknet2tflite/options.py) is the one source: the CLI's flags, the
convert and batch flows' explicit signatures (the Prefect UI builds its form from them) and
the batch manifest keys all agree with it."""
from __future__ import annotations

import argparse
import inspect

import pytest

from darknet2tflite.errors import UserError
from darknet2tflite.options import (BY_NAME, MANIFEST_KEYS, OPTIONS, PATH_KEYS, FILE, FOLDER,
                                    check_parameters, value)


def _convert_parser() -> argparse.ArgumentParser:
    from cli.main import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["convert"]


def _flow_signature(flow) -> dict[str, object]:
    return {n: p.default for n, p in inspect.signature(flow.fn).parameters.items()}


def test_convert_flow_signature_is_the_table():
    from flows.convert import convert
    sig = _flow_signature(convert)
    assert set(sig) == set(BY_NAME)
    for o in OPTIONS:
        want = inspect.Parameter.empty if o.required else o.default
        assert sig[o.name] == want, o.name


def test_batch_flow_defaults_are_the_tables():
    from flows.batch import batch
    sig = _flow_signature(batch)
    shared = set(sig) & set(BY_NAME) - {"out", "calibration"}
    assert {"input_type", "calibration_limit", "float_fallback", "channel_split",
            "calibration_mirror", "variants", "backend"} <= shared
    for name in shared:
        assert sig[name] == BY_NAME[name].default, name


def test_cli_flags_are_the_table():
    parser = _convert_parser()
    actions = {a.dest: a for a in parser._actions}
    for o in OPTIONS:
        if o.cli is None:
            assert o.name not in actions
            continue
        a = actions[o.name]
        assert a.default == o.default and a.required == o.required, o.name
        if o.cli == "flag":
            assert a.option_strings == ["--" + o.name.replace("_", "-")]
        assert a.help == o.help
    extra = set(actions) - set(BY_NAME) - {"help"}
    assert extra == {"task_runner"}  # where stages run: a CLI matter, not a flow parameter


def test_manifest_keys():
    from flows.batch import MODEL_KEYS
    assert MODEL_KEYS == MANIFEST_KEYS
    assert set(MANIFEST_KEYS) == set(BY_NAME) - {"out", "store", "from_stage"}
    assert set(PATH_KEYS) == {o.name for o in OPTIONS if o.path in (FILE, FOLDER)}


def test_value_applies_type_and_default():
    assert value({}, "channel_split") == BY_NAME["channel_split"].default
    assert value({"channel_split": 0}, "channel_split") == 0.0
    assert isinstance(value({"float_fallback": "3"}, "float_fallback"), int)


@pytest.mark.parametrize("params, cli, message", [
    ({"from_stage": "bake"}, True, "--from-stage bake: expected one of parse, build"),
    ({"from_stage": "bake"}, False, "from_stage bake: expected one of parse, build"),
    ({"eval_annotations": "a.json", "eval_images": None}, True,
     "--eval-annotations needs --eval-images"),
    ({"channel_split": 2.0}, False, "channel_split 2.0: expected a fraction"),
    ({"backend": "tvm"}, False, "backend tvm: expected one of direct, onnx2tf, both"),
    ({"cfg": "missing.cfg"}, True, "cfg missing.cfg: no such file"),
    ({"calibration": "missing-folder"}, True, "--calibration missing-folder: no such folder"),
    ({"calibration": "missing-folder"}, False, "calibration missing-folder: no such folder"),
])
def test_check_parameters_names_the_option_as_the_caller_spells_it(tmp_path, monkeypatch,
                                                                     params, cli, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        check_parameters(params, cli=cli)


def test_store_default_is_the_environment_or_the_current_folder(tmp_path, monkeypatch):
    """Not computed from the package's own path: an installed package must not write its
    store into site-packages."""
    from darknet2tflite.paths import STORE_ENV, store_root
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_ENV, raising=False)
    assert store_root(None) == (tmp_path / ".store").resolve()
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "elsewhere"))
    assert store_root(None) == (tmp_path / "elsewhere").resolve()
    assert store_root(str(tmp_path / "given")) == (tmp_path / "given").resolve()


def test_batch_cli_parameters_are_the_batch_flows(tmp_path):
    """`darknet2tflite batch` hands the batch flow exactly its parameters, derived from the
    table (checked and resolved like convert's)."""
    from cli.batch import parameters_from_args
    from cli.main import build_parser
    from flows.batch import batch
    args = build_parser().parse_args(["batch", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--calibration", "data/samples", "--variants",
                                      "float16, dynamic"])
    params = parameters_from_args(args)
    assert set(params) == set(_flow_signature(batch))
    assert params["variants"] == "float16,dynamic" and params["target"] == "cpu"
    assert params["calibration"].startswith("/") and params["allow_approximate"] == ""
    args.channel_split = 2.0
    with pytest.raises(UserError, match="--channel-split 2.0: expected a fraction"):
        parameters_from_args(args)


def test_one_plan_per_run_until_a_folder_changes(tmp_path, yolov4_tiny, sample_images):
    """The CLI's checks, the flow's own and the flow's plan_run share one plan; a photo
    added to the folder is planned again."""
    import shutil
    from darknet2tflite.int8 import planning
    from darknet2tflite.stages.quantize import plan_run
    photos = sorted(sample_images.glob("*.jpg"))
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in photos[:4]:
        shutil.copyfile(p, calib / p.name)
    cfg, weights = yolov4_tiny
    before = planning.computed
    checked = check_parameters(dict(cfg=str(cfg), weights=str(weights), out=str(tmp_path / "o"),
                                    calibration=str(calib), eval_images=str(calib)), cli=True)
    check_parameters(checked)
    plan = plan_run(checked["calibration"], checked["eval_images"], None)
    assert planning.computed == before + 1
    assert len(plan["eval"]) + len(plan["cross"][0]["eval"]) == 4
    plan["eval"].clear()  # a caller's copy: the remembered plan is not changed through it
    assert plan_run(checked["calibration"], checked["eval_images"], None)["eval"]
    shutil.copyfile(photos[4], calib / photos[4].name)
    again = plan_run(checked["calibration"], checked["eval_images"], None)
    assert planning.computed == before + 2
    assert len(again["eval"]) + len(again["cross"][0]["eval"]) == 5

"""`darknet2tflite build` from the outside: real subprocess, real files, user-facing errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CFG_DIR, REPO
from test_cfg import cfg_text

EXE = [sys.executable, "-m", "cli.main"]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_build_yolov3_tiny(tmp_path: Path, yolov3_tiny) -> None:
    out = tmp_path / "out"
    r = run("build", *yolov3_tiny, "--out", out, "--names", CFG_DIR / "coco.names")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "model.float32.tflite", "model.json", "model.keras", "parity.json"]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["status"] == "pass" and parity["max_rel"] <= 1e-5
    assert "parity: pass" in r.stdout
    assert "build Keras model" in r.stderr  # progress is shown
    from darknet2tflite.darknet.metadata import read_tflite_metadata
    meta = read_tflite_metadata(out / "model.float32.tflite")
    assert meta["heads"][1]["mask"] == [1, 2, 3] and meta["names"][0] == "person"


def _bad_inputs(tmp: Path, cfg: Path, weights: Path) -> dict[str, tuple[Path, Path, str]]:
    data = weights.read_bytes()
    cases = {}
    short = tmp / "short.weights"
    short.write_bytes(data[:-1000])
    cases["truncated weights"] = (cfg, short, "file ended while reading")
    extra = tmp / "extra.weights"
    extra.write_bytes(data + b"\0" * 8)
    cases["extra bytes"] = (cfg, extra, "8 bytes left over")
    text = cfg.read_text()
    for name, new, msg in [
        ("unknown section", text.replace("[upsample]", "[upsamplex]"), "unknown section type"),
        ("bad option value", text.replace("filters=256", "filters=2x56", 1),
         "expected an integer, got '2x56'"),
        ("route to missing layer", text.replace("layers = -4", "layers = -400", 1),
         "before the first layer"),
        ("classes/filters mismatch", text.replace("classes=80", "classes=81", 1),
         "filters but mask/classes need"),
    ]:
        p = tmp / (name.replace(" ", "_").replace("/", "_") + ".cfg")
        assert new != text, name
        p.write_text(new)
        cases[name] = (p, weights, msg)
    return cases


def test_bad_input_one_line_error_nothing_written(tmp_path: Path, yolov3_tiny) -> None:
    for name, (cfg, weights, msg) in _bad_inputs(tmp_path, *yolov3_tiny).items():
        out = tmp_path / ("out_" + name.replace(" ", "_").replace("/", "_"))
        r = run("--quiet", "build", cfg, weights, "--out", out)
        assert r.returncode == 2, (name, r.stderr)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("darknet2tflite: error: "), (name, r.stderr)
        assert msg in err[0], (name, err[0])
        assert "Traceback" not in r.stderr
        assert not out.exists(), name
        assert not any(p.name.startswith(f".{out.name}.") for p in tmp_path.iterdir()), name


def test_debug_shows_traceback(tmp_path: Path, yolov3_tiny) -> None:
    bad = tmp_path / "bad.cfg"
    bad.write_text(cfg_text("[convolutional]\nfilters=x\n"))
    r = run("--debug", "build", bad, yolov3_tiny[1], "--out", tmp_path / "o")
    assert r.returncode != 0 and "Traceback" in r.stderr and "CfgError" in r.stderr


def test_missing_files(tmp_path: Path) -> None:
    r = run("build", tmp_path / "nope.cfg", tmp_path / "nope.weights", "--out", tmp_path / "o")
    assert r.returncode == 2 and "nope.cfg: no such file" in r.stderr


def test_weights_fetch_cli(tmp_path: Path) -> None:
    r = run("weights", "fetch", "yolov4-tiny", "--dest", tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "yolov4-tiny.weights").stat().st_size == 24251276
    r = run("weights", "fetch", "yolov9000", "--dest", tmp_path)
    assert r.returncode == 2 and "unknown model" in r.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--channel-split", "2", "--channel-split 2.0"),
    ("--calibration-mirror", "-1", "--calibration-mirror -1: must be >= 0"),
    ("--task-runner", "spark", "task runner 'spark'")])
def test_convert_rejects_a_bad_option_before_any_work(tmp_path: Path, yolov3_tiny,
                                                      sample_images, option, value,
                                                      message) -> None:
    r = run("convert", yolov3_tiny[0], yolov3_tiny[1], "--out", tmp_path / "o",
            "--calibration", sample_images, "--store", tmp_path / "s", option, value)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()

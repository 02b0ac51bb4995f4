"""What a user sees: a quiet console, the label-free verdict in every report, the batch
command.  One cold CLI conversion of yolov3-tiny (6 calibration photos, 2 held out) is shared
by every test here; the later CLI runs reuse its store."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clean_env, shared_path

#: what TensorFlow, absl, Keras and the TFLite converter print when nobody stops them
NOISE = re.compile(r"Saved artifact|TensorSpec|Captures:|oneDNN|cudart|absl|InitializeLog|"
                   r"fully_quantize|inference_type|UserWarning|structure of `inputs`|XNNPACK|"
                   r"^[IWE]0000 |warnings\.warn|DeprecationWarning|Traceback", re.M)


def _cli(*args: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def ux(tmp_path_factory):
    """Cold `convert` of yolov3-tiny, then `--quiet --from-stage evaluate` on the same store
    (evaluate and report recomputed: TensorFlow loads again)."""
    cfg = REPO / "cfg" / "yolov3-tiny.mask123.cfg"
    weights = shared_path("darknet", "weights", "yolov3-tiny.weights")
    work = tmp_path_factory.mktemp("ux")
    env = clean_env(work / "prefect-home")
    store, out = work / "store", work / "out"
    common = ["convert", cfg, weights, "--names", REPO / "cfg" / "coco.names",
              "--calibration", REPO / "data" / "samples", "--store", store, "--out", out]
    cold = _cli(*common, env=env)
    assert cold.returncode == 0, cold.stderr[-3000:]
    quiet = _cli("--quiet", *common, "--from-stage", "evaluate", env=env)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    return {"cold": cold, "quiet": quiet, "store": store, "out": out, "work": work,
            "env": env, "cfg": cfg, "weights": weights}


@pytest.mark.slow
def test_cold_convert_console_has_no_library_chatter(ux):
    cold = ux["cold"]
    text = cold.stdout + cold.stderr
    assert not NOISE.search(text), NOISE.search(text).group(0)
    assert "quantize" in cold.stdout and "report: " in cold.stdout
    assert "int8 vs float32 (label-free, 2 images): AP50 " in cold.stdout  # the verdict
    # progress of the long steps, with a rate
    assert re.search(r"activation ranges \d+/\d+ images \([\d.]+ images/s\)", cold.stderr)
    assert re.search(r"evaluate: 2/2 images x 2 models \([\d.]+ images/s\)", cold.stderr)
    # diverted, not lost: the converter's lines are in the run's log file
    log = Path(re.search(r"^log: (.+)$", cold.stdout, re.M).group(1))
    assert log.parent == ux["store"] / ".logs"  # a dot folder: not a stage
    assert "fully_quantize" in log.read_text()


@pytest.mark.slow
def test_quiet_convert_prints_only_the_paths(ux):
    q = ux["quiet"]
    lines = (q.stdout + q.stderr).splitlines()
    assert len(lines) <= 12, lines
    assert not NOISE.search(q.stdout + q.stderr)
    assert f"report: {ux['out'] / 'report.md'}" in q.stdout


@pytest.mark.slow
def test_report_has_label_free_verdict_first(ux):
    report = json.loads((ux["out"] / "report.json").read_text())
    fa = report["float_agreement"]
    assert fa["images"] == 2 and "ap" not in report["evaluation"]  # no annotations given
    assert 0.5 <= fa["ap50"] <= 1.0 and 0 <= fa["ap"] <= fa["ap50"]
    assert 0.5 <= fa["found"] <= 1.0 and 0.5 <= fa["mean_iou"] <= 1.0
    # the sets are small, and the report says so
    assert any("only 2 evaluation image" in w for w in fa["warnings"])
    assert any("only 6 calibration image" in w for w in fa["warnings"])
    md = (ux["out"] / "report.md").read_text()
    assert md.startswith("**int8 vs float32 (label-free, 2 images):** AP50 ")
    assert "## Targets" not in md and "targets" in report  # facts stay in report.json


def _scan_matches(ref, got):
    """The matching rule spelled out as a plain scan over every pair: each got box in
    score order takes the untaken same-class reference box of highest IoU >= 0.5 (the
    last one among equal IoUs)."""
    import numpy as np

    from darknet2tflite.evaluation.agreement import MATCH_IOU, REFERENCE_CONF, iou_matrix
    rk, gk = ref.scores >= REFERENCE_CONF, got.scores >= REFERENCE_CONF
    rb, rc, gb, gs, gc = ref.boxes[rk], ref.classes[rk], got.boxes[gk], got.scores[gk], \
        got.classes[gk]
    ious, taken, found = iou_matrix(rb, gb), set(), []
    for j in np.argsort(-gs, kind="stable"):
        best, best_i = MATCH_IOU, -1
        for i in range(len(rb)):
            if i not in taken and rc[i] == gc[j] and ious[i, j] >= best:
                best, best_i = ious[i, j], i
        if best_i >= 0:
            taken.add(best_i)
            found.append(float(best))
    return found


def test_agreement_matches_are_the_plain_scan_with_ties_and_shared_boxes():
    """Matching class by class gives the scan's matches, in its order, also where IoUs
    tie exactly (boxes on an integer grid), scores tie and classes interleave."""
    import numpy as np

    from darknet2tflite.evaluation.agreement import _matches
    from darknet2tflite.evaluation.decode import Detections
    rng = np.random.default_rng(3)

    def dets(k):
        xy = rng.integers(0, 5, (k, 2)).astype(np.float32)
        wh = rng.integers(2, 6, (k, 2)).astype(np.float32)
        return Detections(np.concatenate([xy, xy + wh], 1),
                          rng.choice([0.2, 0.3, 0.5, 0.9], k).astype(np.float32),
                          rng.integers(0, 3, k).astype(np.int64))
    matched = 0
    for _ in range(300):
        ref, got = dets(int(rng.integers(0, 30))), dets(int(rng.integers(0, 30)))
        want = _scan_matches(ref, got)
        assert _matches(ref, got) == want
        matched += len(want)
    assert matched > 300  # the cases exercise real matches, not only empty ones


@pytest.mark.slow
def test_agreement_drops_for_an_int8_model_with_broken_scales(ux, tmp_path):
    """Same images, same float reference: the delivered int8 model against a copy with one
    intermediate activation's scale divided by 20 (its range clipped to 1/20)."""
    from darknet2tflite.evaluation.agreement import float_agreement
    from darknet2tflite.evaluation.evaluate import detect, load_eval_images, run_model
    from darknet2tflite.images import find_images
    from darknet2tflite.tflite.flatbuffer import _to_bytes, _to_obj

    out = ux["out"]
    meta = json.loads((out / "model.json").read_text())
    model = _to_obj((out / "model.int8.tflite").read_bytes())
    g = model.subgraphs[0]
    per_tensor = [op.outputs[0] for op in g.operators
                  if g.tensors[op.outputs[0]].quantization is not None
                  and len(g.tensors[op.outputs[0]].quantization.scale or []) == 1]
    q = g.tensors[per_tensor[len(per_tensor) // 2]].quantization
    q.scale = [float(q.scale[0]) / 20]
    broken = tmp_path / "broken.int8.tflite"
    broken.write_bytes(_to_bytes(model))

    batch, paths, sizes, _ = load_eval_images(sorted(find_images(REPO / "data" / "samples",
                                                                 limit=None)), meta)
    ref = detect(run_model(out / "model.float32.tflite", batch, meta), meta, sizes)
    good = float_agreement(ref, detect(run_model(out / "model.int8.tflite", batch, meta),
                                       meta, sizes), sizes)
    bad = float_agreement(ref, detect(run_model(broken, batch, meta), meta, sizes), sizes)
    assert good["images"] == bad["images"] == 8 and good["float_boxes"] >= 10
    assert good["ap50"] >= 0.9 and good["found"] >= 0.9
    assert bad["ap50"] <= good["ap50"] - 0.15, (good, bad)
    assert bad["found"] <= good["found"] - 0.4, (good, bad)


@pytest.mark.slow
def test_batch_with_a_truncated_weights_file(ux):
    """yolov3-tiny (all stages from the shared store) and a truncated copy: the good one is
    delivered, the broken one is one line, exit status 1, no traceback."""
    models = ux["work"] / "models"
    models.mkdir()
    shutil.copyfile(ux["cfg"], models / "v3t.cfg")
    shutil.copyfile(REPO / "cfg" / "coco.names", models / "v3t.names")
    (models / "v3t.weights").symlink_to(ux["weights"])
    shutil.copyfile(ux["cfg"], models / "broken.cfg")
    (models / "broken.weights").write_bytes(ux["weights"].read_bytes()[:1_000_000])
    out = ux["work"] / "batch-out"
    r = _cli("batch", models, "--out", out, "--calibration", REPO / "data" / "samples",
             "--store", ux["store"], env=ux["env"])
    text = r.stdout + r.stderr
    assert r.returncode == 1, text[-3000:]
    assert "Traceback" not in text and "TypeError" not in text, text[-3000:]
    assert not NOISE.search(text), NOISE.search(text).group(0)
    broken = [ln for ln in r.stdout.splitlines() if ln.startswith("broken ")]
    assert len(broken) == 1 and "Failed" in broken[0] and "broken.weights" in broken[0]
    good = [ln for ln in r.stdout.splitlines() if ln.startswith("v3t ")]
    assert len(good) == 1 and "Completed" in good[0]
    assert "1/2 model(s) converted" in r.stdout
    assert (out / "v3t" / "model.int8.tflite").is_file() and not (out / "broken").exists()


def test_batch_and_serve_refuse_a_missing_source(tmp_path):
    env = clean_env(tmp_path / "ph")
    for argv in (["batch", tmp_path / "nope", "--out", tmp_path / "o", "--calibration",
                  REPO / "data" / "samples"],
                 ["serve", "--batch-source", tmp_path / "nope"]):
        r = _cli(*argv, env=env, timeout=120)
        assert r.returncode == 2 and "no such folder or manifest" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_report_pictures_for_the_ui(ux):
    """The per-layer chart is written and linked; the UI artifact's markdown carries every
    picture inline (a relative link shows as alt text there), decodable as an image."""
    import base64

    import cv2
    import numpy as np

    from darknet2tflite.evaluation.ui_markdown import IMAGE_LINK, inline_images

    out = ux["out"]
    md = (out / "report.md").read_text()
    assert "![int8 error per Darknet layer](report_images/layer_error.png)" in md
    chart = cv2.imread(str(out / "report_images" / "layer_error.png"))
    assert chart is not None and chart.shape[1] >= 600
    ui = inline_images(md, out)
    links = IMAGE_LINK.findall(ui)
    assert len(links) == 3 and all(t.startswith("data:image/") for _, t in links)
    for _, target in links:
        raw = base64.b64decode(target.split(",", 1)[1])
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[1] <= 1100
    assert len(ui) < 1_000_000
    # side-by-side pictures open with a white caption strip over each half
    pair = cv2.imread(str(out / (json.loads((out / "report.json").read_text())
                                 ["evaluation"]["drawn"][0])))
    assert (pair[:5] == 255).all()


def test_labels_of_overlapping_boxes_do_not_overlap():
    import cv2

    from darknet2tflite.evaluation.decode import Detections
    from darknet2tflite.evaluation.draw import _place_label

    dets = Detections(boxes=[[100, 100, 300, 300]] * 3 + [[110, 105, 280, 290]],
                      scores=[0.9, 0.8, 0.7, 0.6], classes=[0, 1, 2, 3])
    placed: list = []
    spots = [_place_label(dets, k, ["person", "dog", "horse", "sheep"], 640, 480, 2,
                          cv2.FONT_HERSHEY_SIMPLEX, 0.7, placed) for k in range(4)]
    assert len(set(spots)) == 4
    for i, a in enumerate(placed):
        for b in placed[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_help_and_missing_weights_say_where_things_are(tmp_path):
    env = clean_env(tmp_path / "ph")
    fetch = _cli("weights", "fetch", "--help", env=env, timeout=60)
    assert "yolov4-tiny" in fetch.stdout and "yolov3-tiny" in fetch.stdout
    conv = _cli("convert", "--help", env=env, timeout=60)
    assert "parse, build, parity, probe, rewrite, quantize, evaluate, report" in \
        " ".join(conv.stdout.split())
    for stem, hint in (("yolov3-tiny", "darknet2tflite weights fetch yolov3-tiny"),
                       ("yolov3", "darknet2tflite weights fetch NAME")):
        r = _cli("convert", REPO / "cfg" / "yolov3.cfg", tmp_path / f"{stem}.weights",
                 "--out", tmp_path / "o", "--calibration", REPO / "data" / "samples",
                 "--store", tmp_path / "store", env=env, timeout=60)
        assert r.returncode == 2 and hint in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists() and not (tmp_path / "o").exists()

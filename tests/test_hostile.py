"""Hostile and unusual input: every bad input refused in one line before any stage runs (exit
2, nothing written, bounded time and memory), folder walks that never hang or crash, the
stated bounds (README "Limits"), and an --out replaced as a whole.

CLI cases run in a child process (a crash there must not take pytest with it) under an
address-space limit, and check that TensorFlow was never imported when the error is found
before any stage.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darknet2tflite import bounds
from darknet2tflite.int8.calibration import CalibrationWarning, calibrate
from darknet2tflite.darknet.cfg import parse_cfg
from darknet2tflite.errors import CfgError, InputError, UserError, WeightsError, shown
from darknet2tflite.images import image_walk, load_rgb, preprocess
from darknet2tflite.inputs import (AnnotationError, ManifestError, check_annotations,
                                   check_manifest_defaults, check_model, writable_folder)
from darknet2tflite.store.artifacts import _tree_digest
from darknet2tflite.darknet.weights import random_weights, read_weights, write_weights


ROOT = Path(__file__).resolve().parents[1]
MALFORMED = Path(__file__).parent / "malformed"
TINY = MALFORMED / "valid_tiny.cfg"
#: the address space a refused-input child may use: Python + numpy + OpenCV fit in it, a
#: 20000x20000 decode (1.2 GB) or a GiB of parameters does not
CHILD_AS = 1536 << 20
TIMEOUT = 120

_CHILD = textwrap.dedent("""
    import sys
    from cli.main import main
    try:
        rc = main(sys.argv[1:])
    except SystemExit as e:  # argparse
        rc = e.code
    print("tensorflow imported:", "tensorflow" in sys.modules)
    print("prefect imported:", "prefect" in sys.modules)
    sys.exit(rc)
""")


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_AS, CHILD_AS))


def _drop_dac_capabilities() -> None:
    """Root ignores permission bits through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH /
    CAP_FOWNER; dropped from the bounding set before exec, the child is a root that a
    read-only folder stops (as it would stop anyone on a read-only mount)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def cli(*args: str, cwd: Path | None = None, read_only_root: bool = False,
        memory: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PREFECT_HOME=str(cwd or ROOT / ".prefect"))

    def pre() -> None:
        if memory:
            _limit_memory()
        if read_only_root and os.geteuid() == 0:
            _drop_dac_capabilities()
    return subprocess.run([sys.executable, "-c", _CHILD, "--quiet", *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=cwd,
                          preexec_fn=pre, errors="backslashreplace")


def refused(res: subprocess.CompletedProcess, *names: str, tf: bool = False) -> str:
    """Exit 2, exactly one stderr line that names every one of ``names``; TensorFlow and
    Prefect not imported unless ``tf``."""
    err = res.stderr.strip()
    assert res.returncode == 2, (res.returncode, err[-2000:])
    assert len(err.splitlines()) == 1, err[-3000:]
    assert err.startswith("darknet2tflite: error:"), err
    assert "Traceback" not in err and len(err) < 600, err
    for n in names:
        assert n in err, (n, err)
    if not tf:  # found before any stage: neither TensorFlow nor Prefect was even imported
        assert "tensorflow imported: False" in res.stdout, res.stdout
        assert "prefect imported: False" in res.stdout, res.stdout
    return err


# --------------------------------------------------------------------------- fixtures


def _png(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img)
    return path


def _jpeg(path: Path, seed: int = 0, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    path.write_bytes(buf.tobytes())
    return path


def _truncated_jpeg(path: Path, seed: int = 0) -> Path:
    data = _jpeg(path, seed).read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _huge_png(path: Path, w: int = 20000, h: int = 20000) -> Path:
    """A valid 1-bit grey PNG of w x h (a few KB on disk, 1.2 GB as RGB)."""
    row = b"\x00" + b"\x00" * ((w + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0,
                                                                          0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    """valid_tiny.cfg and random weights for it (a model the checks accept)."""
    cfg = tmp_path / "tiny.cfg"
    shutil.copy(TINY, cfg)
    weights = tmp_path / "tiny.weights"
    write_weights(weights, parse_cfg(cfg), random_weights(parse_cfg(cfg)))
    return cfg, weights


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    d = tmp_path / "calib"
    d.mkdir()
    for i in range(2):
        _jpeg(d / f"{i}.jpg", i)
    return d


def _convert(tiny: tuple[Path, Path], tmp_path: Path, *extra: str, calibration=None,
             out: Path | None = None, **kw) -> tuple[subprocess.CompletedProcess, Path]:
    out = out or tmp_path / "out"
    args = ["convert", *tiny, "--out", out, "--calibration",
            calibration if calibration is not None else tmp_path / "calib",
            "--store", tmp_path / "store", *extra]
    return cli(*args, cwd=tmp_path, **kw), out


def _nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    tmp = tmp_path / "store" / ".tmp"
    assert not tmp.exists() or not list(tmp.iterdir())


# --------------------------------------------------------------------------- cfg + weights


def test_channels_2_refused_at_parse_naming_file_section_key(tmp_path: Path) -> None:
    cfg = tmp_path / "two.cfg"
    cfg.write_text(TINY.read_text().replace("channels=3", "channels=2"))
    with pytest.raises(CfgError) as ei:
        parse_cfg(cfg)
    msg = str(ei.value)
    assert str(cfg) + ":4" in msg and "[net]" in msg and "key 'channels'" in msg
    weights = tmp_path / "w.weights"
    weights.write_bytes(b"\0" * 64)
    err = refused(cli("build", cfg, weights, "--out", tmp_path / "out"), str(cfg), "channels")
    assert not (tmp_path / "out").exists(), err


def test_weights_with_huge_values_refused_at_load(tmp_path: Path, tiny) -> None:
    cfg, weights = tiny
    parsed = parse_cfg(cfg)
    layers = random_weights(parsed)
    layers[0].weights[0, 0, 0, 0] = 3e30
    write_weights(weights, parsed, layers)
    with pytest.raises(WeightsError, match="magnitude 3e[+]30"):
        read_weights(weights, parsed)
    refused(cli("build", cfg, weights, "--out", tmp_path / "out"), str(weights), "layer 0")


def test_huge_but_legal_weight_values_load(tiny) -> None:
    cfg, weights = tiny
    parsed = parse_cfg(cfg)
    layers = random_weights(parsed)
    layers[0].weights[:] = bounds.MAX_WEIGHT_ABS  # at the bound: accepted
    layers[0].biases[:] = -bounds.MAX_WEIGHT_ABS
    write_weights(weights, parsed, layers)
    got = read_weights(weights, parsed)
    assert float(np.abs(got.layers[0].weights).max()) == bounds.MAX_WEIGHT_ABS


def _chain_cfg(path: Path, n: int, filters: int = 4, width: int = 32) -> Path:
    body = f"[net]\nwidth={width}\nheight={width}\nchannels=3\n\n"
    body += f"[convolutional]\nfilters={filters}\nsize=1\nactivation=leaky\n\n" * n
    body += ("[convolutional]\nfilters=21\nsize=1\nactivation=linear\n\n"
             "[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=2\nnum=3\n")
    path.write_text(body)
    return path


def test_layer_parameter_and_input_bounds_refused_at_parse(tmp_path: Path) -> None:
    with pytest.raises(CfgError, match=f"at most {bounds.MAX_LAYERS}"):
        parse_cfg(_chain_cfg(tmp_path / "long.cfg", bounds.MAX_LAYERS))
    # 260 bytes declaring 1 GiB of parameters (two 16384x16384 1x1 convs)
    big = tmp_path / "big.cfg"
    big.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n"
                   "[convolutional]\nfilters=16384\nsize=1\nactivation=linear\n\n"
                   "[convolutional]\nfilters=16384\nsize=1\nactivation=linear\n\n"
                   "[convolutional]\nfilters=21\nsize=1\nactivation=linear\n\n"
                   "[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=2\nnum=3\n")
    with pytest.raises(CfgError, match="parameters") as ei:
        parse_cfg(big)
    assert f"{big}:" in str(ei.value) and "(layer 1)" in str(ei.value)
    # the same through the CLI with a sparse weights file of the declared size: refused
    # before anything is allocated (the child has 1.5 GB of address space)
    weights = tmp_path / "big.weights"
    with open(weights, "wb") as f:
        f.truncate(20 + 4 * (16384 * 3 + 16384 * 16384 + 16384 * 2 + 21 * 16384 + 21))
    refused(cli("build", big, weights, "--out", tmp_path / "out"), str(big), "parameters")
    wide = tmp_path / "wide.cfg"
    wide.write_text("[net]\nwidth=4100\nheight=4100\nchannels=3\n\n"
                    "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n\n"
                    "[yolo]\nmask=0\nanchors=1,2\nclasses=1\nnum=1\n")
    with pytest.raises(CfgError, match="4100x4100") as ei:
        parse_cfg(wide)
    assert "key 'width'" in str(ei.value)


def test_deep_chain_builds(tmp_path: Path) -> None:
    """1000 layers failed with RecursionError inside Keras; 1200 build now."""
    from darknet2tflite.model.builder import build_keras
    cfg = parse_cfg(_chain_cfg(tmp_path / "deep.cfg", 1200, filters=2, width=8))
    weights = tmp_path / "deep.weights"
    write_weights(weights, cfg, random_weights(cfg))
    model, _ = build_keras(cfg, read_weights(weights, cfg))
    assert len(model.layers) > 1200


def test_names_file_short_and_with_blank_lines(tmp_path: Path, tiny, calib) -> None:
    cfg, weights = tiny
    names = tmp_path / "x.names"
    names.write_text("\n\ncat\n\n  dog  \n\n\n")   # 2 classes, extra blank lines: fine
    check_model(cfg, weights, names)
    names.write_text("cat\n")
    res, out = _convert(tiny, tmp_path, "--names", names)
    refused(res, str(names), "1 names", "2 classes")
    _nothing_written(tmp_path, out)


# --------------------------------------------------------------------------- convert inputs


def test_calibration_only_truncated_jpegs_refused_before_any_stage(tmp_path: Path,
                                                                    tiny) -> None:
    d = tmp_path / "calib"
    d.mkdir()
    for i in range(4):
        _truncated_jpeg(d / f"t{i}.jpg", i)
    res, out = _convert(tiny, tmp_path)
    refused(res, str(d), "none of the 4", "truncated JPEG")
    _nothing_written(tmp_path, out)


def test_calibration_some_truncated_is_one_warning(tmp_path: Path, tiny) -> None:
    d = tmp_path / "calib"
    d.mkdir()
    _jpeg(d / "good.jpg")
    for i in range(7):
        _truncated_jpeg(d / f"t{i}.jpg", i)
    with pytest.warns(CalibrationWarning) as rec:
        cs = calibrate(tiny[0], d, tmp_path / "c.npy", progress=None)
    assert cs.images == [str(d / "good.jpg")]
    warned = [w for w in rec if issubclass(w.category, CalibrationWarning)]
    assert len(warned) == 1
    msg = str(warned[0].message)
    assert "skipped 7 unusable" in msg and "and 2 more" in msg and "t0.jpg" in msg


def test_empty_calibration_folder(tmp_path: Path, tiny) -> None:
    (tmp_path / "calib").mkdir()
    res, out = _convert(tiny, tmp_path)
    refused(res, "calibration", "no images")
    _nothing_written(tmp_path, out)


@pytest.mark.parametrize("defect", ["no_file_name", "bad_bbox", "unknown_image"])
def test_malformed_annotations_refused(tmp_path: Path, tiny, calib, defect: str) -> None:
    doc = {"images": [{"id": 1, "file_name": "0.jpg"}, {"id": 2, "file_name": "1.jpg"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}],
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    if defect == "no_file_name":
        del doc["images"][1]["file_name"]
        where = "images[1]"
    elif defect == "bad_bbox":
        doc["annotations"][0]["bbox"] = [1, 2, "wide"]
        where = "annotations[0]"
    else:
        doc["annotations"][0]["image_id"] = 7
        where = "annotations[0]"
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    with pytest.raises(AnnotationError, match=where.replace("[", r"\[")):
        check_annotations(ann)
    res, out = _convert(tiny, tmp_path, "--eval-annotations", ann, "--eval-images", calib)
    refused(res, str(ann), where)
    _nothing_written(tmp_path, out)


def test_out_with_a_file_as_parent(tmp_path: Path, tiny, calib) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res, _ = _convert(tiny, tmp_path, out=blocker / "out")
    refused(res, "--out", str(blocker))


def test_out_in_a_read_only_folder_refused_before_the_conversion(tmp_path: Path, tiny,
                                                                  calib) -> None:
    """Permission bits do not stop root, so as root the child runs without the capabilities
    that override them; the check tries to create a folder, which is what fails (for a
    read-only mount too, which stops root as well)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    try:
        res = cli("convert", *tiny, "--out", locked / "out", "--calibration", calib,
                  "--store", tmp_path / "store", cwd=tmp_path, read_only_root=True)
        refused(res, "--out", str(locked), "Permission denied")
        res = cli("build", *tiny, "--out", locked / "out", cwd=tmp_path, read_only_root=True)
        refused(res, "--out", "Permission denied")
    finally:
        os.chmod(locked, 0o755)
    assert not list(locked.iterdir())
    with pytest.raises(UserError, match="not a folder"):
        writable_folder(tiny[0] / "x", "--out")


def test_store_whose_temp_folder_is_a_symlink(tmp_path: Path, tiny, calib) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (store / ".tmp").symlink_to(tmp_path / "elsewhere")
    res, out = _convert(tiny, tmp_path)
    refused(res, "--store", ".tmp", "symlink")
    assert not out.exists() and not list((tmp_path / "elsewhere").iterdir())


def test_huge_option_value_is_cut(tmp_path: Path, tiny, calib) -> None:
    huge = "x" * 100_000  # one command-line argument can't hold much more (MAX_ARG_STRLEN)
    for extra in (["--variants", huge], ["--calibration-limit", huge]):
        res, out = _convert(tiny, tmp_path, *extra)
        err = refused(res, "…")
        assert len(err) < 400
        _nothing_written(tmp_path, out)
    # a flow parameter from the UI has no such limit
    from darknet2tflite.options import check
    with pytest.raises(UserError) as ei:
        check({"variants": "y" * 4_000_000}, error=UserError)
    assert len(str(ei.value)) < 400


# --------------------------------------------------------------------------- detect


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return _jpeg(tmp_path / "photo.jpg", size=64)


def test_detect_missing_model_before_tensorflow(tmp_path: Path, photo: Path) -> None:
    refused(cli("detect", tmp_path / "nope.tflite", photo, "--out", tmp_path / "o.png"),
            "nope.tflite", "no such file")


def test_detect_not_a_tflite(tmp_path: Path, photo: Path) -> None:
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"this is not a flatbuffer at all")
    refused(cli("detect", fake, photo, "--out", tmp_path / "o.png"), str(fake), "TFL3")


def test_detect_truncated_tflite_and_bad_model_json(tmp_path: Path, photo: Path) -> None:
    import tensorflow as tf
    m = tf.keras.Sequential([tf.keras.Input((4, 4, 3)), tf.keras.layers.Conv2D(2, 1)])
    data = tf.lite.TFLiteConverter.from_keras_model(m).convert()
    model = tmp_path / "m" / "model.tflite"
    model.parent.mkdir()
    model.write_bytes(data[: len(data) // 2])
    side = model.with_name("model.json")
    side.write_text('{"input": {"width": 416, "height": "tall"}, "heads": []}')
    refused(cli("detect", model, photo, "--out", tmp_path / "o.png"), str(side),
            "input.height")
    side.write_text('{"input": {"width": 416')
    refused(cli("detect", model, photo, "--out", tmp_path / "o.png"), str(side),
            "not valid JSON")
    side.unlink()
    # found by TensorFlow's flatbuffer reader (TensorFlow needs more address space), still
    # one line: no start-up log lines before it
    refused(cli("detect", model, photo, "--out", tmp_path / "o.png", memory=False),
            str(model), "truncated", tf=True)
    assert not (tmp_path / "o.png").exists()


def test_detect_non_utf8_image_name_does_not_crash(tmp_path: Path) -> None:
    """cv2.imread segfaulted (exit 139) on such a name; the bytes are read by Python now."""
    name = os.fsdecode(b"caf\xe9-\xff.jpg")
    _jpeg(tmp_path / name)
    res = cli("detect", tmp_path / "nope.tflite", tmp_path / name, "--out",
              tmp_path / "o.png")
    refused(res, "nope.tflite")
    code = ("import sys, os; from darknet2tflite.images import load_rgb; "
            "print(load_rgb(os.fsdecode(sys.argv[1].encode('latin-1'))).shape)")
    out = subprocess.run([sys.executable, "-c", code,
                          os.fsencode(tmp_path / name).decode("latin-1")],
                         capture_output=True, text=True, timeout=TIMEOUT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0 and "(48, 48, 3)" in out.stdout, out.stderr


# --------------------------------------------------------------------------- images + bounds


def test_huge_png_refused_from_its_header_in_bounded_memory(tmp_path: Path) -> None:
    png = _huge_png(tmp_path / "huge.png")
    assert png.stat().st_size < 500_000
    code = ("import sys; from darknet2tflite.images import load_rgb, ImageError\n"
            "try:\n    load_rgb(sys.argv[1])\nexcept ImageError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code, str(png)], capture_output=True,
                         text=True, timeout=TIMEOUT, preexec_fn=_limit_memory,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "20000x20000" in res.stdout and str(bounds.MAX_IMAGE_PIXELS) in res.stdout


def test_unusual_but_valid_pngs_load(tmp_path: Path) -> None:
    from PIL import Image
    deep = np.arange(16 * 16 * 3, dtype=np.uint16).reshape(16, 16, 3) * 300
    rgb16 = load_rgb(_png(tmp_path / "deep.png", deep))
    assert rgb16.dtype == np.uint8 and rgb16.shape == (16, 16, 3)
    pal = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).convert("P")
    pal.save(tmp_path / "palette.png")
    assert load_rgb(tmp_path / "palette.png").shape == (16, 16, 3)
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8), "RGBA").save(tmp_path / "rgba.png")
    assert load_rgb(tmp_path / "rgba.png").shape == (8, 8, 3)


def test_preprocess_table_matches_the_float64_formula() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    want = (img.astype(np.float64) / 255.0).astype(np.float32)
    got = preprocess(img, 53, 37, False)   # same size: the values themselves
    assert np.array_equal(got, want)


def test_fifo_loops_and_dangling_links_in_a_store_key(tmp_path: Path) -> None:
    d = tmp_path / "calib"
    (d / "sub").mkdir(parents=True)
    _jpeg(d / "a.jpg")
    os.mkfifo(d / "pipe.jpg")
    (d / "sub" / "up").symlink_to(d)                       # directory loop
    (d / "dangling.jpg").symlink_to(d / "gone.jpg")
    (d / "l1.jpg").symlink_to(d / "l2.jpg")
    (d / "l2.jpg").symlink_to(d / "l1.jpg")                # file symlink loop
    first = _tree_digest(d)
    assert _tree_digest(d) == first
    (d / "a.jpg").write_bytes(b"changed")
    assert _tree_digest(d) != first
    walk = image_walk(d)
    assert [p.name for p in walk.files] == ["a.jpg"]
    reasons = {p.name: why for p, why in walk.skipped}
    assert reasons == {"up": "directory symlink (not followed)", "dangling.jpg":
                       "dangling symlink", "l1.jpg": "symlink loop", "l2.jpg": "symlink loop",
                       "pipe.jpg": "not a regular file (FIFO)"}


def test_tree_digest_descends_symlinked_folders_once(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "x.bin").write_bytes(b"1")
    d = tmp_path / "d"
    d.mkdir()
    (d / "link").symlink_to(real)
    before = _tree_digest(d)
    (real / "x.bin").write_bytes(b"2")   # content behind the link is part of the key
    assert _tree_digest(d) != before


# --------------------------------------------------------------------------- probe, batch


def test_profile_field_of_the_wrong_type(tmp_path: Path) -> None:
    from darknet2tflite.probe.profiles import ProfileError, load_profile
    good = json.loads((ROOT / "darknet2tflite" / "profiles" / "int8.json").read_text())
    prof = tmp_path / "p.json"
    for key, value in (("min_sqnr_db", "high"), ("allowed_ops", "CONV_2D"),
                       ("require_integer", "yes"), ("notes", [1, 2])):
        prof.write_text(json.dumps({**good, key: value}))
        with pytest.raises(ProfileError) as ei:
            load_profile(str(prof))
        assert str(prof) in str(ei.value) and f"key '{key}'" in str(ei.value)


def test_manifest_defaults_unknown_key_or_not_a_mapping(tmp_path: Path) -> None:
    from flows.batch import MODEL_KEYS, discover_models
    cfg = tmp_path / "a.cfg"
    shutil.copy(TINY, cfg)
    (tmp_path / "a.weights").write_bytes(b"")
    man = tmp_path / "m.yaml"
    man.write_text("defaults:\n  calibraton: /data\nmodels:\n  - {cfg: a.cfg, weights: a.weights}\n")
    with pytest.raises(ManifestError, match="calibraton"):
        discover_models(man, {})
    man.write_text("defaults: [1, 2]\nmodels:\n  - {cfg: a.cfg, weights: a.weights}\n")
    with pytest.raises(ManifestError, match="must be a mapping"):
        discover_models(man, {})
    assert check_manifest_defaults({"calibration_limit": 5}, man, MODEL_KEYS)
    # a bad entry stays that entry's error; the others still run
    man.write_text("models:\n  - {cfg: a.cfg, weights: a.weights}\n  - {cfg: a.cfg, wieghts: x, "
                   "name: b}\n")
    models = discover_models(man, {})
    assert "params" in models[0] and "wieghts" in models[1]["error"]


# --------------------------------------------------------------------------- atomic --out


def test_existing_out_is_swapped_as_a_whole(tmp_path: Path) -> None:
    from darknet2tflite.store.output import staged_output
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.int8.tflite").write_text("old")
    (out / "model.json").write_text("old")
    (out / "mine.txt").write_text("user's")
    with staged_output(out) as tmp:
        (tmp / "model.int8.tflite").write_text("new")
        (tmp / "model.json").write_text("new")
        new_inode = os.stat(tmp).st_ino
    assert os.stat(out).st_ino == new_inode          # one rename/exchange, not file by file
    assert (out / "model.int8.tflite").read_text() == (out / "model.json").read_text() == "new"
    assert (out / "mine.txt").read_text() == "user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_kill_while_staging_leaves_the_old_set(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.json").write_text("old")
    code = textwrap.dedent(f"""
        import os, signal
        from darknet2tflite.store.output import staged_output
        with staged_output({str(out)!r}) as tmp:
            (tmp / "model.json").write_text("new")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    res = subprocess.run([sys.executable, "-c", code], timeout=TIMEOUT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == -signal.SIGKILL
    assert (out / "model.json").read_text() == "old"


def test_parked_old_set_is_recovered(tmp_path: Path) -> None:
    """The fallback's two renames: a kill between them leaves ``.out.<rand>.old``, which the
    next run puts back before it starts."""
    from darknet2tflite.store.output import staged_output
    parked = tmp_path / ".out.abcd.old"
    parked.mkdir()
    (parked / "model.json").write_text("old")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output(out):
            assert (out / "model.json").read_text() == "old"
            raise RuntimeError("failed run")
    assert (out / "model.json").read_text() == "old"


# --------------------------------------------------------------------------- property test

_NODES = st.sampled_from(["good", "truncated", "garbage", "empty", "fifo", "dangling",
                          "dirloop", "fileloop", "subdir", "huge"])
_NAMES = st.sampled_from([b"a", b"caf\xe9", b"\xff\xfe", b"x y", b"-n", b"..jpg", b"\xe2\x80\xae"])


def _plant(root: Path, plan: list[tuple[str, bytes, int]]) -> dict[str, int]:
    """Create the planned entries; returns counts of usable images and skippable entries."""
    made = {"good": 0, "bad": 0}
    depth_dirs = [root]
    for i, (kind, stem, depth) in enumerate(plan):
        folder = depth_dirs[min(depth, len(depth_dirs) - 1)]
        name = os.fsdecode(stem + f"-{i}.jpg".encode())
        p = folder / name
        if kind == "good":
            _jpeg(p, i, size=16)
            made["good"] += 1
        elif kind == "truncated":
            _truncated_jpeg(p, i)
            made["bad"] += 1
        elif kind == "garbage":
            p.write_bytes(b"\xff\xd8" + os.urandom(40))
            made["bad"] += 1
        elif kind == "empty":
            p.write_bytes(b"")
            made["bad"] += 1
        elif kind == "fifo":
            os.mkfifo(p)
            made["bad"] += 1
        elif kind == "dangling":
            p.symlink_to(folder / "missing")
            made["bad"] += 1
        elif kind == "fileloop":
            p.symlink_to(p)
            made["bad"] += 1
        elif kind == "dirloop":
            (folder / os.fsdecode(stem + f"-{i}".encode())).symlink_to(root)
        elif kind == "subdir":
            sub = folder / os.fsdecode(stem + f"-{i}.d".encode())
            sub.mkdir()
            depth_dirs.append(sub)
        elif kind == "huge":
            _huge_png(folder / os.fsdecode(stem + f"-{i}.png".encode()), 9000, 9000)
            made["bad"] += 1
    return made


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=st.lists(st.tuples(_NODES, _NAMES, st.integers(0, 3)), min_size=1, max_size=10))
def test_calibration_walk_never_hangs_or_crashes(tmp_path_factory, plan) -> None:
    """Run in a child under a timeout and a memory limit: whatever the tree holds, the store
    key hashes it, and calibration either loads the good images with one warning that
    counts the rest, or fails in one InputError line when none is usable."""
    root = tmp_path_factory.mktemp("tree")
    made = _plant(root, plan)
    cfg = tmp_path_factory.mktemp("cfg") / "tiny.cfg"
    shutil.copy(TINY, cfg)
    code = textwrap.dedent("""
        import sys, warnings, json
        from darknet2tflite.int8.calibration import calibrate, CalibrationWarning
        from darknet2tflite.errors import InputError
        from darknet2tflite.errors import shown
        from darknet2tflite.store.artifacts import _tree_digest
        from pathlib import Path
        _tree_digest(Path(sys.argv[2]))
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            try:
                cs = calibrate(sys.argv[1], sys.argv[2], sys.argv[3], progress=None)
                out = {"images": len(cs.images), "skipped": len(cs.skipped), "error": None,
                       "first": [shown(Path(f).name, 40) for f, _ in cs.skipped[:5]]}
            except InputError as e:
                out = {"images": 0, "skipped": None, "error": str(e)}
        out["warnings"] = [str(w.message) for w in rec if w.category is CalibrationWarning]
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", code, str(cfg), str(root),
                          str(root.parent / f"{root.name}.npy")],
                         capture_output=True, text=True, timeout=60, preexec_fn=_limit_memory,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    if made["good"]:
        assert got["images"] == made["good"], got
        assert got["skipped"] >= made["bad"], got
        if got["skipped"]:
            assert len(got["warnings"]) == 1, got
            assert f"skipped {got['skipped']} unusable" in got["warnings"][0]
            assert all(name in got["warnings"][0] for name in got["first"]), got
    else:
        assert got["error"] and "\n" not in got["error"], got


def test_shown_cuts_and_escapes() -> None:
    assert shown("x" * 200) == "x" * 79 + "…"
    assert shown(os.fsdecode(b"caf\xe9")) == "caf\\xe9"
    assert shown("a\nb") == "a b"
    with pytest.raises(InputError):
        raise InputError(shown("v" * 10 ** 6))


def test_fifo_given_as_cfg_or_weights_is_refused_not_read(tmp_path: Path, tiny) -> None:
    fifo = tmp_path / "pipe.cfg"
    os.mkfifo(fifo)
    with pytest.raises(CfgError, match="not a regular file"):
        parse_cfg(fifo)
    with pytest.raises(WeightsError, match="not a regular file"):
        read_weights(fifo, parse_cfg(tiny[0]))
    refused(cli("build", fifo, tiny[1], "--out", tmp_path / "out"), str(fifo), "FIFO")
    refused(cli("build", tiny[0], fifo, "--out", tmp_path / "out"), str(fifo), "FIFO")


def test_flow_parameters_from_the_ui_get_the_same_checks(tmp_path: Path, tiny, calib) -> None:
    """A run started from the UI never passes the CLI: the flow's own check (before its first
    task) refuses the same inputs with the same one line."""
    from flows.convert import _check_inputs
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))
    params = {"cfg": str(tiny[0]), "weights": str(tiny[1]), "out": str(tmp_path / "out"),
              "calibration": str(calib), "eval_images": str(calib),
              "eval_annotations": str(ann), "store": str(tmp_path / "store")}
    with pytest.raises(UserError, match=r"images\[0\]: needs a 'file_name'"):
        _check_inputs(params)
    _check_inputs(dict(params, eval_annotations=None, eval_images=None))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images"):
        _check_inputs(dict(params, eval_annotations=None, eval_images=None,
                           calibration=str(empty)))
    assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


def test_replace_without_exchange_uses_two_renames(tmp_path: Path, monkeypatch) -> None:
    """File systems without RENAME_EXCHANGE: the old set is parked, the new one renamed in,
    the parked one removed; the user's extra file is carried over either way."""
    from darknet2tflite.store import swap
    monkeypatch.setattr(swap, "exchange", lambda a, b: False)
    out, new = tmp_path / "out", tmp_path / ".out.x.partial"
    out.mkdir()
    new.mkdir()
    (out / "model.json").write_text("old")
    (out / "notes.txt").write_text("mine")
    (new / "model.json").write_text("new")
    swap.replace_dir(new, out)
    assert (out / "model.json").read_text() == "new"
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_non_utf8_names_reach_the_report_as_text(tmp_path: Path, tiny, calib) -> None:
    """Names inside the folders may be any bytes; report.md stays UTF-8 (the Prefect UI
    reads it).  A parameter path itself must be UTF-8: Prefect records it as JSON."""
    from darknet2tflite.evaluation.report import write_report
    from darknet2tflite.inputs import check_convert_inputs
    odd = os.fsdecode(b"caf\xe9")
    write_report({"model": "m", "warnings": [f"{odd}.jpg skipped"]}, tmp_path)
    assert "caf\\xe9.jpg skipped" in (tmp_path / "report.md").read_text(encoding="utf-8")
    weird = tmp_path / odd
    weird.mkdir()
    _jpeg(weird / "a.jpg")
    with pytest.raises(UserError, match=r"--calibration .*caf\\xe9: the path is not valid UTF-8"):
        check_convert_inputs({"cfg": str(tiny[0]), "weights": str(tiny[1]),
                              "calibration": str(weird)}, spell=lambda k: f"--{k}")


def test_calibration_of_one_huge_png_refused_up_front_in_bounded_memory(tmp_path: Path,
                                                                        tiny) -> None:
    d = tmp_path / "calib"
    d.mkdir()
    _huge_png(d / "huge.png")
    res, out = _convert(tiny, tmp_path)
    refused(res, str(d), "huge.png", "20000x20000")
    _nothing_written(tmp_path, out)


@pytest.mark.parametrize("old, new", [
    ("activation=linear", "activation=" + "x" * 100_000),
    ("filters=21", "filters=" + "9" * 100_000),
    ("[yolo]", "[" + "y" * 100_000 + "]")])
def test_long_cfg_values_are_cut_in_the_message(tmp_path: Path, old: str, new: str) -> None:
    cfg = tmp_path / "long.cfg"
    cfg.write_text(TINY.read_text().replace(old, new))
    with pytest.raises(CfgError) as ei:
        parse_cfg(cfg)
    msg = str(ei.value)
    assert str(cfg) in msg and "…" in msg and len(msg) < 500 and "\n" not in msg


def test_annotations_matching_no_image_refused_before_any_stage(tmp_path: Path, tiny,
                                                                calib) -> None:
    doc = {"images": [{"id": 1, "file_name": "elsewhere.jpg"}], "annotations": [],
           "categories": [{"id": 1, "name": "cat"}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    res, out = _convert(tiny, tmp_path, "--eval-annotations", ann, "--eval-images", calib)
    refused(res, str(ann), "none of the 1 images")
    _nothing_written(tmp_path, out)


def test_names_with_byte_order_mark_and_crlf(tmp_path: Path, tiny) -> None:
    from darknet2tflite.darknet.metadata import read_names
    names = tmp_path / "w.names"
    names.write_bytes(b"\xef\xbb\xbfcat\r\n\r\ndog\r\n")
    assert read_names(names) == ["cat", "dog"]
    check_model(*tiny, names)
    names.write_bytes(b"cat\n\xff\xfe\n")
    with pytest.raises(UserError, match="not UTF-8"):
        check_model(*tiny, names)

"""Bad input never crashes: a corpus of malformed files plus property-based mutations of the
real cfgs and weights. Every case is a one-line located error, exit 2, nothing in --out."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darknet2tflite.darknet.cfg import parse_cfg
from cli.main import main
from darknet2tflite.errors import DarknetError, UserError
from darknet2tflite.darknet.weights import read_weights

from conftest import CFG_DIR

MALFORMED = Path(__file__).parent / "malformed"
BAD_CFGS = sorted(p for p in MALFORMED.glob("*.cfg") if p.name != "valid_tiny.cfg")


@pytest.mark.parametrize("path", BAD_CFGS, ids=lambda p: p.stem)
def test_malformed_corpus(path: Path) -> None:
    with pytest.raises(DarknetError) as ei:
        parse_cfg(path)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg


def test_corpus_base_is_valid() -> None:
    assert parse_cfg(MALFORMED / "valid_tiny.cfg").heads()


def _check_cli_error(tmp_path: Path, cfg: Path, weights: Path, capsys) -> str:
    out = tmp_path / "out"
    rc = main(["--quiet", "build", str(cfg), str(weights), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("darknet2tflite: error:"), err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    return err


@pytest.mark.parametrize("path", BAD_CFGS, ids=lambda p: p.stem)
def test_malformed_corpus_cli(tmp_path: Path, path: Path, capsys) -> None:
    weights = tmp_path / "w.weights"
    weights.write_bytes(np.zeros(5, "<i4").tobytes())
    err = _check_cli_error(tmp_path, path, weights, capsys)
    assert path.name in err


# --------------------------------------------------------------------------- mutations

def _mutations() -> st.SearchStrategy:
    lines_value = st.sampled_from(["-1", "0", "999999999", "abc", "1e40", "", "nan", "-0.5",
                                   "1,2,,3", "\u00e9", "0x10"])
    return st.one_of(
        st.tuples(st.just("truncate"), st.floats(0.0, 0.999)),
        st.tuples(st.just("set_value"), st.integers(0, 10_000), lines_value),
        st.tuples(st.just("duplicate_line"), st.integers(0, 10_000)),
        st.tuples(st.just("drop_line"), st.integers(0, 10_000)),
        st.tuples(st.just("bytes"), st.integers(0, 10_000),
                  st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("route"), st.integers(0, 10_000), st.integers(-500, 500)),
    )


def _mutate(text: bytes, m: tuple) -> bytes:
    lines = text.split(b"\n")
    kind = m[0]
    if kind == "truncate":
        return text[: int(len(text) * m[1])]
    i = m[1] % len(lines)
    if kind == "set_value":
        idx = [k for k, ln in enumerate(lines) if b"=" in ln and not ln.startswith(b"#")]
        k = idx[m[1] % len(idx)]
        lines[k] = lines[k].split(b"=")[0] + b"=" + m[2].encode()
    elif kind == "duplicate_line":
        lines.insert(i, lines[i])
    elif kind == "drop_line":
        del lines[i]
    elif kind == "bytes":
        lines[i] = lines[i] + m[2]
    elif kind == "route":
        idx = [k for k, ln in enumerate(lines) if ln.replace(b" ", b"").startswith((b"layers=", b"from="))]
        k = idx[m[1] % len(idx)]
        lines[k] = lines[k].split(b"=")[0] + b"=" + str(m[2]).encode()
    return b"\n".join(lines)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(["yolov4-tiny", "yolov3-tiny", "yolov4"]), m=_mutations())
def test_mutated_cfgs_never_crash(tmp_path_factory, name: str, m: tuple) -> None:
    d = tmp_path_factory.mktemp("mut")
    p = d / "mutated.cfg"
    p.write_bytes(_mutate((CFG_DIR / f"{name}.cfg").read_bytes(), m))
    try:
        cfg = parse_cfg(p)
    except DarknetError as e:
        assert "\n" not in str(e) and str(p) in str(e)
        return
    # still valid: must be structurally sound
    assert cfg.heads() and all("out_shape" in s.params for s in cfg.layers)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(cut=st.integers(0, 24_251_276 + 64), extra=st.binary(max_size=16),
       header=st.one_of(st.none(), st.tuples(st.integers(-5, 5000), st.integers(-5, 5000))))
def test_mutated_weights_never_crash(tmp_path_factory, yolov4_tiny, cut: int, extra: bytes,
                                     header) -> None:
    cfg_path, w_path = yolov4_tiny
    data = bytearray(w_path.read_bytes()[:cut] + extra)
    if header is not None and len(data) >= 8:
        data[0:8] = np.array(header, "<i4").tobytes()
    p = tmp_path_factory.mktemp("w") / "mutated.weights"
    p.write_bytes(bytes(data))
    try:
        read_weights(p, parse_cfg(cfg_path))
    except DarknetError as e:
        assert "\n" not in str(e) and str(p) in str(e)
        return
    assert bytes(data) == w_path.read_bytes()  # only the untouched file may load


def test_enormous_weights_refused_without_reading(tmp_path: Path, yolov4_tiny) -> None:
    p = tmp_path / "huge.weights"
    with open(p, "wb") as f:
        f.truncate(8 * 1024 ** 3)  # sparse: 8 GB that would not fit the budget
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DarknetError, match="bytes left over"):
        read_weights(p, parse_cfg(yolov4_tiny[0]))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_absurd_sizes_refused_before_allocation(tmp_path: Path) -> None:
    text = (MALFORMED / "valid_tiny.cfg").read_text().replace("width=32\nheight=32",
                                                              "width=8192\nheight=8192")
    text = text.replace("[convolutional]", "[convolutional]\nfilters=4096\nsize=1\n"
                        "activation=leaky\n\n[convolutional]", 1)
    p = tmp_path / "absurd.cfg"
    p.write_text(text)
    with pytest.raises(DarknetError, match="too large"):
        parse_cfg(p)


def test_names_cannot_escape_out(tmp_path: Path, yolov3_tiny, capsys) -> None:
    """--out is the only place written; a cfg whose name looks like a path stays inert."""
    evil = tmp_path / "..evil..cfg"
    evil.write_bytes((CFG_DIR / "yolov3-tiny.cfg").read_bytes().replace(b"classes=80",
                                                                        b"classes=81", 1))
    _check_cli_error(tmp_path, evil, yolov3_tiny[1], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["..evil..cfg"]


def test_cfg_values_are_never_evaluated(tmp_path: Path) -> None:
    text = (MALFORMED / "valid_tiny.cfg").read_text().replace(
        "filters=21", "filters=__import__('os').system('touch PWNED')")
    p = tmp_path / "code.cfg"
    p.write_text(text)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(UserError):
            parse_cfg(p)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "PWNED").exists()

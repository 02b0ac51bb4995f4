"""cfg parser and weights reader: real cfgs parse, every malformed input is a located error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from darknet2tflite.darknet.cfg import parse_cfg
from darknet2tflite.errors import CfgError, WeightsError
from darknet2tflite.darknet.weights import expected_size, read_weights, write_weights, random_weights

from conftest import CFG_DIR

HEAD = """
[convolutional]
size=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""


def cfg_text(body: str, net: str = "width=32\nheight=32\nchannels=3") -> str:
    return f"[net]\n{net}\n\n{body}\n{HEAD}"


def write(tmp_path: Path, text: str | bytes, name: str = "m.cfg") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


@pytest.mark.parametrize("name,n_layers,heads", [
    ("yolov4-tiny", 38, [(13, 13, 255), (26, 26, 255)]),
    ("yolov3-tiny", 24, [(13, 13, 255), (26, 26, 255)]),
    ("yolov4", 162, [(76, 76, 255), (38, 38, 255), (19, 19, 255)]),
    ("yolov3", 107, [(13, 13, 255), (26, 26, 255), (52, 52, 255)]),
])
def test_reference_cfgs_parse(name: str, n_layers: int, heads: list) -> None:
    cfg = parse_cfg(CFG_DIR / f"{name}.cfg")
    assert len(cfg.layers) == n_layers
    assert [h.params["out_shape"] for h in cfg.heads()] == heads
    assert (cfg.width, cfg.height, cfg.channels) == (416, 416, 3) or name == "yolov4"


def test_darknet_defaults_and_aliases(tmp_path: Path) -> None:
    body = "[conv]\nfilters=8\nsize=3\npad=1\n\n[max]\nsize=2\nstride=2\n\n[conv]\nfilters=8\n"
    cfg = parse_cfg(write(tmp_path, cfg_text(body)))
    kinds = [s.kind for s in cfg.layers]
    assert kinds[:3] == ["convolutional", "maxpool", "convolutional"]
    # Darknet's default activation is logistic, not linear
    assert cfg.layers[0].params["activation"] == "logistic"
    assert cfg.layers[1].params["out_shape"] == (16, 16, 8)


def test_route_groups_and_negative_indices(tmp_path: Path) -> None:
    body = ("[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky\n\n"
            "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n\n[route]\nlayers=-1,0\n")
    cfg = parse_cfg(write(tmp_path, cfg_text(body)))
    assert cfg.layers[1].params["out_shape"] == (32, 32, 4)
    assert cfg.layers[2].params["inputs"] == [1, 0]
    assert cfg.layers[2].params["out_shape"] == (32, 32, 12)


@pytest.mark.parametrize("text,where,what", [
    (cfg_text("[lstm]\noutput=3\n"), ":6", "not supported here: [lstm]"),
    (cfg_text("[bogus]\n"), ":6", "unknown section type: [bogus]"),
    (cfg_text("[convolutional]\nfilters=abc\n"), ":7", "expected an integer, got 'abc'"),
    (cfg_text("[convolutional]\nfilters=-3\n"), "key 'filters'", "below the minimum"),
    (cfg_text("[convolutional]\nfilters=8\nsize=0\n"), "key 'size'", "below the minimum"),
    (cfg_text("[convolutional]\nfilters=8\nactivation=sparkle\n"), "key 'activation'",
     "unsupported value 'sparkle'"),
    (cfg_text("[convolutional]\nfilters=8\nfancy_option=1\n"), "key 'fancy_option'",
     "unknown option"),
    (cfg_text("[convolutional]\nfilters=8\nfilters=9\n"), ":8", "option given twice"),
    (cfg_text("[route]\nlayers=-5\n"), "key 'layers'", "before the first layer"),
    (cfg_text("[route]\nlayers=3\n"), "key 'layers'", "future layer"),
    (cfg_text("[shortcut]\nfrom=7\n"), "key 'from'", "future layer"),
    (cfg_text("[convolutional]\nfilters=8\nsize=99\n"), "key 'size'", "above the maximum"),
    (cfg_text("", net="width=32\nheight=99999\nchannels=3"), "key 'height'", "above the maximum"),
    ("[convolutional]\nfilters=3\n", ":1", "first section must be [net]"),
    ("width=3\n[net]\n", ":1", "option outside any section"),
    ("", "m.cfg", "no sections found"),
    (cfg_text("[convolutional]\nfilters 8\n"), ":7", "expected 'key=value'"),
])
def test_bad_cfg_is_a_located_one_line_error(tmp_path: Path, text: str, where: str,
                                             what: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(CfgError) as ei:
        parse_cfg(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(p) in msg and where in msg and what in msg, msg


def test_classes_filters_mismatch_names_the_yolo_layer(tmp_path: Path) -> None:
    text = cfg_text("").replace("filters=21", "filters=20")
    with pytest.raises(CfgError, match=r"\[yolo\] \(layer 1\).*20 filters but .* 21"):
        parse_cfg(write(tmp_path, text))


def test_non_utf8_and_huge_cfg_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CfgError, match=r":3: line is not valid UTF-8"):
        parse_cfg(write(tmp_path, b"[net]\nwidth=32\n\xff\xfe=1\n"))
    big = tmp_path / "big.cfg"
    with open(big, "wb") as f:
        f.truncate(17 * 1024 * 1024)
    with pytest.raises(CfgError, match="never larger"):
        parse_cfg(big)


def test_training_options_are_accepted(tmp_path: Path) -> None:
    net = "batch=64\nsubdivisions=8\nwidth=32\nheight=32\nchannels=3\nmomentum=0.9\nmosaic=1"
    cfg = parse_cfg(write(tmp_path, cfg_text("", net=net)))
    assert cfg.width == 32


# --------------------------------------------------------------------------- weights

def test_real_weights_headers(yolov4_tiny, yolov3_tiny) -> None:
    w4 = read_weights(yolov4_tiny[1], parse_cfg(yolov4_tiny[0]))
    assert (w4.major, w4.minor, w4.revision) == (0, 2, 5) and len(w4.layers) == 21
    w3 = read_weights(yolov3_tiny[1], parse_cfg(yolov3_tiny[0]))
    assert (w3.major, w3.minor, w3.revision) == (0, 2, 0) and len(w3.layers) == 13
    assert w3.layers[0].weights.shape == (16, 3, 3, 3)


def test_truncated_weights_name_the_layer(tmp_path: Path, yolov4_tiny) -> None:
    cfg = parse_cfg(yolov4_tiny[0])
    data = yolov4_tiny[1].read_bytes()
    p = tmp_path / "short.weights"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as ei:
        read_weights(p, cfg)
    msg = str(ei.value)
    assert "file ended while reading" in msg and "conv layer" in msg
    assert f"file has {len(data) // 2} bytes, the cfg needs {len(data)}" in msg


def test_extra_bytes_are_an_error(tmp_path: Path, yolov3_tiny) -> None:
    cfg = parse_cfg(yolov3_tiny[0])
    p = tmp_path / "long.weights"
    p.write_bytes(yolov3_tiny[1].read_bytes() + b"\0" * 12)
    with pytest.raises(WeightsError, match="12 bytes left over"):
        read_weights(p, cfg)


def test_weights_for_another_cfg(yolov4_tiny, yolov3_tiny) -> None:
    with pytest.raises(WeightsError):
        read_weights(yolov3_tiny[1], parse_cfg(yolov4_tiny[0]))


def test_write_read_roundtrip_with_32bit_seen(tmp_path: Path) -> None:
    cfg = parse_cfg(write(tmp_path, cfg_text("[convolutional]\nfilters=4\nsize=3\npad=1\n"
                                             "batch_normalize=1\n")))
    layers = random_weights(cfg, seed=3)
    p = tmp_path / "w.weights"
    write_weights(p, cfg, layers, version=(0, 1, 0))
    assert p.stat().st_size == expected_size(cfg, 0, 1)
    back = read_weights(p, cfg)
    assert back.minor == 1
    np.testing.assert_array_equal(back.layers[0].rolling_variance, layers[0].rolling_variance)


def test_windows_edited_cfgs_parse_the_same(tmp_path: Path) -> None:
    """cfgs saved on Windows (CRLF, a UTF-8 byte-order mark) and commented inline with
    Darknet's ';' or '#' give the very same layers as the reference cfg."""
    ref_text = (CFG_DIR / "yolov4-tiny.cfg").read_bytes()
    ref = parse_cfg(CFG_DIR / "yolov4-tiny.cfg")
    variants = {
        "crlf.cfg": ref_text.replace(b"\n", b"\r\n"),
        "bom.cfg": b"\xef\xbb\xbf" + ref_text.replace(b"\n", b"\r\n"),
        "inline.cfg": ref_text.replace(b"filters=255", b"filters=255 ; 3*(80+5)", 1)
                              .replace(b"classes=80", b"classes=80 # coco", 1),
    }
    for name, data in variants.items():
        cfg = parse_cfg(write(tmp_path, data, name))
        assert [(s.kind, s.params) for s in cfg.layers] == \
            [(s.kind, s.params) for s in ref.layers], name
    # a BOM anywhere but at the start is still an error naming the line
    line = ref_text[:ref_text.index(b"width=416")].count(b"\n") + 1
    with pytest.raises(CfgError, match=rf"mid\.cfg:{line}, \[net\].*U\+FEFF"):
        parse_cfg(write(tmp_path, ref_text.replace(b"width=416", b"\xef\xbb\xbfwidth=416"),
                        "mid.cfg"))

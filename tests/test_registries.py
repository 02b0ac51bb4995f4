"""A Darknet section kind is declared once per concern, in that concern's registry: its cfg
options (darknet/cfg.py SECTION_SPECS), its shape rule (darknet/shapes.py SHAPE_RULES), its
Keras lowering (model/builder.py SECTION_BUILDERS) and its probe signature
(probe/signatures.py SIGNATURES).  A kind present in one and missing in another fails here,
by name, instead of half-working (e.g. probed under an empty signature)."""
from __future__ import annotations

import pytest

from darknet2tflite.darknet.cfg import ALIASES, SECTION_SPECS
from darknet2tflite.darknet.config import Section
from darknet2tflite.darknet.shapes import SHAPE_RULES
from darknet2tflite.probe.signatures import SIGNATURES, signature


def _layer_registries() -> dict[str, set[str]]:
    from darknet2tflite.model.builder import SECTION_BUILDERS
    return {"cfg option spec (SECTION_SPECS)": set(SECTION_SPECS) - {"net"},
            "shape rule (SHAPE_RULES)": set(SHAPE_RULES),
            "Keras builder (SECTION_BUILDERS)": set(SECTION_BUILDERS),
            "probe signature (SIGNATURES)": set(SIGNATURES)}


def test_every_layer_kind_is_in_every_registry():
    regs = _layer_registries()
    every = set().union(*regs.values())
    missing = {name: sorted(every - kinds) for name, kinds in regs.items() if every - kinds}
    assert not missing, f"section kinds missing from a registry: {missing}"
    assert {"convolutional", "route", "yolo"} <= every


def test_every_cfg_alias_names_a_declared_kind():
    assert set(ALIASES.values()) == set(SECTION_SPECS)


def test_opencv_reference_knows_only_declared_kinds():
    """The OpenCV reference supports a subset; it may not invent kinds of its own."""
    from darknet2tflite.reference.opencv import SUPPORTED_SECTIONS
    assert SUPPORTED_SECTIONS <= set(SECTION_SPECS)


def test_unknown_kind_has_no_silent_signature():
    sec = Section(kind="gaussian_yolo", header="gaussian_yolo", line=1, index=0, file="x.cfg")
    with pytest.raises(KeyError, match="no probe signature"):
        signature(sec)

"""Decode metadata (model.json) and its copy inside .tflite files.

The models output raw heads (the I/O contract), so anything that wants boxes needs the
anchors, masks and scale_x_y that only the cfg knows; shipping them with the model keeps a
.tflite usable on its own.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from darknet2tflite.darknet.config import DarknetConfig

METADATA_NAME = "darknet2tflite"


def head_output_name(sec) -> str:
    """Keras output name of a detection head (the raw input of that [yolo]/[region])."""
    return f"head_{sec.index:03d}_{sec.kind}"


def read_names(path: str | Path | None) -> list[str] | None:
    if path is None:
        return None
    names = [ln.strip() for ln in Path(path).read_text(encoding="utf-8-sig").splitlines()]
    return [n for n in names if n]


def decode_metadata(cfg: DarknetConfig, names: list[str] | None = None) -> dict[str, Any]:
    heads = []
    for sec in cfg.heads():
        p = sec.params
        h, w, _ = p["out_shape"]
        head: dict[str, Any] = {"index": sec.index, "type": sec.kind, "grid": [h, w],
                                "classes": p["classes"], "output": head_output_name(sec)}
        if sec.kind == "yolo":
            head.update(mask=p["mask"], anchors=[p["anchors"][m] for m in p["mask"]],
                        scale_x_y=p["scale_x_y"], new_coords=p["new_coords"])
        else:
            head.update(anchors=p["anchors"], num=p["num"], coords=p["coords"],
                        mask=list(range(p["num"])), scale_x_y=1.0, new_coords=0,
                        softmax=p["softmax"])
        heads.append(head)
    classes = {h["classes"] for h in heads}
    if names is not None and len(classes) == 1 and len(names) != classes.pop():
        raise ValueError(f"names file has {len(names)} names but the cfg has "
                         f"{heads[0]['classes']} classes")
    return {
        "format": "darknet2tflite/1",
        "cfg": cfg.path.name,
        "input": {"width": cfg.width, "height": cfg.height, "channels": cfg.channels,
                  "letter_box": cfg.letter_box, "layout": "NHWC", "color": "RGB",
                  "scale": 1 / 255},
        "heads": heads,
        "names": names,
    }


def write_json(path: str | Path, data: Any) -> None:
    from darknet2tflite.store.atomic import atomic_write_bytes
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def embed_tflite_metadata(tflite: bytes, meta: dict[str, Any]) -> bytes:
    """Add ``meta`` as a named metadata buffer of the flatbuffer (no tflite_support needed)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.python.util import (
        _convert_model_from_bytearray_to_object as to_obj,
        _convert_model_from_object_to_bytearray as to_bytes,
    )
    model = to_obj(bytearray(tflite))
    buf = schema.BufferT()
    buf.data = list(json.dumps(meta).encode())
    model.buffers.append(buf)
    md = schema.MetadataT()
    md.name = METADATA_NAME
    md.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()
                      and m.name != METADATA_NAME] + [md]
    return bytes(to_bytes(model))


def read_tflite_metadata(tflite_path: str | Path) -> dict[str, Any] | None:
    from tensorflow.lite.python.util import _convert_model_from_bytearray_to_object as to_obj
    model = to_obj(bytearray(Path(tflite_path).read_bytes()))
    for m in model.metadata or []:
        name = m.name.decode() if isinstance(m.name, bytes) else m.name
        if name == METADATA_NAME:
            return json.loads(bytes(model.buffers[m.buffer].data))
    return None

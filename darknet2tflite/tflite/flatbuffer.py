"""The TFLite flatbuffer as an object tree (schema, op and type names), for edits the converter API does not offer."""
from __future__ import annotations

from typing import Any




def _schema() -> Any:
    from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _to_obj(data: bytes) -> Any:
    from tensorflow.lite.python.util import _convert_model_from_bytearray_to_object as to_obj
    return to_obj(bytearray(data))


def _to_bytes(model: Any) -> bytes:
    from tensorflow.lite.python.util import _convert_model_from_object_to_bytearray as to_b
    return bytes(to_b(model))


def _op_names() -> dict[int, str]:
    schema = _schema()
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _type_names() -> dict[int, str]:
    schema = _schema()
    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def _tname(t: Any) -> str:
    n = t.name
    return n.decode() if isinstance(n, bytes) else str(n)

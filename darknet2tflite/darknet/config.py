"""A parsed Darknet cfg as data: sections with their options and validated parameters, and the size limits every stage relies on."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from darknet2tflite.errors import CfgError

MAX_SPATIAL = 8192
MAX_CHANNELS = 65536


@dataclass
class Option:
    value: str
    line: int


@dataclass
class Section:
    """One bracketed section; ``params`` holds the validated, typed values."""

    kind: str
    header: str
    line: int
    index: int
    file: str
    options: dict[str, Option] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def error(self, message: str, key: str | None = None) -> CfgError:
        line = self.options[key].line if key and key in self.options else self.line
        return CfgError(message, file=self.file, line=line, section=self.header,
                        layer=self.index, key=key)

    @property
    def activation(self) -> str:
        return self.params.get("activation", "linear")


@dataclass
class DarknetConfig:
    path: Path
    net: Section
    layers: list[Section]

    @property
    def width(self) -> int:
        return self.net.params["width"]

    @property
    def height(self) -> int:
        return self.net.params["height"]

    @property
    def channels(self) -> int:
        return self.net.params["channels"]

    @property
    def letter_box(self) -> bool:
        return bool(self.net.params["letter_box"])

    def heads(self) -> list[Section]:
        return [s for s in self.layers if s.kind in ("yolo", "region")]


def conv_float_counts(sec: Section) -> list[tuple[str, int]]:
    p = sec.params
    n, c = p["filters"], p["in_shapes"][0][2]
    parts = [("biases", n)]
    if p["batch_normalize"]:
        parts += [("scales", n), ("rolling_mean", n), ("rolling_variance", n)]
    parts.append(("weights", n * (c // p["groups"]) * p["size"] * p["size"]))
    return parts

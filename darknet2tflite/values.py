"""What a JSON value must be where a number is read: a bool is not an int, NaN is no size."""
from __future__ import annotations

import math
from typing import Any


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

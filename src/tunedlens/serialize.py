"""JSON that is always valid JSON: NaN and infinities become ``null``."""

from __future__ import annotations

import json
import math


def json_safe(value):
    """``value`` with every non-finite float (also in nested lists and dicts) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def dumps(value, **options) -> str:
    """``json.dumps`` of :func:`json_safe` ``(value)``; never writes ``NaN`` or ``Infinity``."""
    return json.dumps(json_safe(value), allow_nan=False, **options)

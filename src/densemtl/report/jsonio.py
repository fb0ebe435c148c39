"""Strict JSON for run files: a metric with no valid pixel (NaN) is written as ``null``."""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """Replace non-finite floats anywhere in nested dicts/lists by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (which standard JSON parsers reject)."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)

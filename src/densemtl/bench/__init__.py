"""Benchmarks: ``measure_speed`` times a training step of each balancing method against EW.

The names below are imported on first use, so that a bench worker process (which starts by
importing ``densemtl.bench.processes``) can watch its parent before torch is even loaded.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NaiveLoop", "machine_info", "measure_speed"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from densemtl.bench import speed

        return getattr(speed, name)
    raise AttributeError(f"module 'densemtl.bench' has no attribute {name!r}")

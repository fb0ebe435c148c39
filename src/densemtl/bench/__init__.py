"""Benchmarks: ``measure_speed`` times a training step of each balancing method against EW."""

from densemtl.bench.speed import NaiveLoop, machine_info, measure_speed

__all__ = ["NaiveLoop", "machine_info", "measure_speed"]

"""Shared fixtures: tiny, seeded, CPU-only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny tensors: threads only add contention

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Tiny settings for end-to-end training tests: a few images, a narrow SegNet.
TINY_TRAIN = [
    "--size",
    "32x40",
    "--n-train",
    "8",
    "--n-val",
    "4",
    "--batch-size",
    "4",
    "--epochs",
    "1",
    "--arch-arg",
    "width=0.125",
    "--arch-arg",
    "depth_stages=3",
    "--quiet",
]


@pytest.fixture
def tiny_args() -> list[str]:
    return list(TINY_TRAIN)

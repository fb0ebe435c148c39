"""Under real ``torchrun --nproc_per_node 2`` (gloo, CPU): a mistake found before the ranks join is
one densemtl line, printed once (rank 0), and no rank's traceback: a bad flag, ``--device cuda`` on
a machine without CUDA, a bad ``DENSEMTL_DIST_TIMEOUT_MIN`` (a refused combination of flags takes
the same path: tests/test_inert_flags.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from test_distributed import _torchrun

CASES = [
    (["--epoch", "3"], {}, "unrecognized arguments: --epoch 3"),
    (["--epochs", "0"], {"DENSEMTL_DIST_TIMEOUT_MIN": "abc"}, "DENSEMTL_DIST_TIMEOUT_MIN must be a number"),
    (["--device", "cuda", "--epochs", "0"], {}, "--device 'cuda': CUDA is not available on this machine"),
]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the --device cuda case needs a machine without CUDA")
@pytest.mark.parametrize(("args", "env", "line"), CASES, ids=["flag", "timeout-env", "device-cuda"])
def test_a_mistake_is_one_line_printed_once(args: list[str], env: dict[str, str], line: str, tmp_path: Path) -> None:
    done = _torchrun([*args, "--out", str(tmp_path / "run")], tmp_path, env={**os.environ, **env})
    assert done.returncode != 0
    errors = [text for text in done.stderr.splitlines() if text.startswith("densemtl: error:")]
    assert len(errors) == 1 and line in errors[0], done.stderr[-3000:]
    for rank_trace in ("could not convert string", "AssertionError", "RuntimeError: Found no NVIDIA", "ValueError"):
        assert rank_trace not in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run").exists()

"""The demo's settings learn every task visibly (a short version of ``densemtl train``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densemtl.cli.main import main


@pytest.mark.slow
def test_demo_settings_learn_every_task(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    # The demo's own defaults (synthetic 64x80, SegNet x0.25), fewer epochs to stay quick.
    assert main(["train", "--epochs", "4", "--quiet", "--out", str(run)]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[0]["val"], lines[-1]["val"]
    assert last["seg"]["miou"] > 2 * first["seg"]["miou"]
    assert last["seg"]["pix_acc"] > first["seg"]["pix_acc"] + 0.2
    assert last["depth"]["abs_err"] < 0.6 * first["depth"]["abs_err"]
    assert last["normal"]["mean"] < first["normal"]["mean"] - 20

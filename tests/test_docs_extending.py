"""Every Python block of docs/extending.md runs as written: the task it registers, and the
architecture it registers, checks and trains; ``densemtl list`` then names that architecture.
What the page registers is removed again afterwards, so no other test sees it."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from densemtl import data, methods, models, tasks
from densemtl.cli.main import main

DOCS = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
REGISTRIES = (tasks.TASKS, models.MODELS, data.DATASETS, methods.METHODS)


def blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOCS.read_text(), re.S | re.M)


@pytest.fixture
def registries_restored() -> Iterator[None]:
    """Whatever the page registers is unregistered after the test."""
    before = [set(r.available()) for r in REGISTRIES]
    yield
    for registry, names in zip(REGISTRIES, before, strict=True):
        for name in set(registry.available()) - names:
            registry.unregister(name)


@pytest.mark.usefixtures("registries_restored", "no_plots")
def test_docs_extending_blocks_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    code = blocks()
    assert len(code) >= 4  # the task, then the architecture, its checks and its training
    namespace: dict[str, object] = {"__name__": "__docs__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, block in enumerate(code):
            exec(compile(block, f"{DOCS.name}[{i}]", "exec"), namespace)  # noqa: S102
    assert "grey" in tasks.available()
    assert models.MODELS.tiny("tinynet") == {"width": 4}
    assert list(models.MODELS.knobs("tinynet")) == ["task_channels", "width"]
    summary = namespace["summary"]
    assert isinstance(summary, dict) and summary["arch"] == "tinynet" and summary["epochs"] == 1
    assert (tmp_path / "runs" / "tinynet" / "checkpoints" / "last.pt").is_file()
    capsys.readouterr()
    assert main(["list"]) == 0
    listed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("architectures:"))
    assert "tinynet" in listed.split(":", 1)[1].replace(",", " ").split()

"""Every row of docs/errors.md, run: the exact one-line message, the exit status, nothing written.

The table is the test's data, so the documentation cannot drift from what densemtl says. Each row
names a command over the placeholders ``TMP`` (a scratch folder, also the working directory),
``DATA`` (a tiny dataset in the MTAN layout, ``TMP/data``), ``RUN`` (a run trained on it,
``TMP/run``; both copied from the session's ``tiny_run``, tests/conftest.py) and ``FILE`` (a text
file, ``TMP/notes.txt``); ``SETUP`` below breaks what the row's "what is wrong" column says. In a
message, ``…`` stands for any text (a listing, another helper's wording). Every command runs
in-process and must leave every file under ``TMP`` as it was.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from densemtl.cli.main import main
from errors_setup import SETUP
from errors_setup_plugins import PLUGIN_ENV

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
ROW = re.compile(r"^\|\s*`([a-z0-9-]+)`\s*\|(.*)\|\s*`densemtl ([^`]+)`\s*\|\s*`([^`]+)`\s*\|\s*([0-9]+)\s*\|\s*$")
PLACEHOLDER = re.compile(r"\b(TMP|DATA|RUN|FILE)\b")


def table() -> list[tuple[str, str, str, int]]:
    """(id, command after ``densemtl``, message, exit status) of each row of docs/errors.md."""
    rows = []
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows.append((m.group(1), m.group(3), m.group(4), int(m.group(5))))
    return rows


#: Rows that only mean something on a machine without a CUDA device.
NEEDS_NO_GPU = {"device-cuda", "eval-device-cuda", "torchrun-device-cuda"}
#: What torchrun sets in the environment of rank 0 of 2 processes (the rows marked torchrun).
TORCHRUN_RANK0 = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
#: The environment of a row, set for its command only.
ENV: dict[str, dict[str, str]] = {
    "torchrun-timeout-env": {**TORCHRUN_RANK0, "DENSEMTL_DIST_TIMEOUT_MIN": "abc"},
    "torchrun-device-cuda": TORCHRUN_RANK0,
    **PLUGIN_ENV,
}


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content's hash, every folder as "dir"."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def expected_pattern(message: str, paths: dict[str, Path]) -> re.Pattern[str]:
    """The row's message as a regex: placeholders replaced by the paths, ``…`` as any text."""
    parts = [PLACEHOLDER.sub(lambda m: str(paths[m.group(1)]), piece) for piece in message.split("…")]
    return re.compile("densemtl: error: " + ".*".join(re.escape(piece) for piece in parts))


ROWS = table()


def test_the_table_is_big_and_consistent() -> None:
    ids = [r[0] for r in ROWS]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert set(SETUP) <= set(ids), sorted(set(SETUP) - set(ids))
    assert set(ENV) <= set(ids), sorted(set(ENV) - set(ids))
    assert {status for *_, status in ROWS} <= {1, 2}


@pytest.mark.parametrize(("row", "command", "message", "status"), ROWS, ids=[r[0] for r in ROWS])
def test_row(
    row: str,
    command: str,
    message: str,
    status: int,
    tiny_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if row in NEEDS_NO_GPU and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    shutil.copytree(tiny_run / "data", tmp_path / "data")
    shutil.copytree(tiny_run / "run", tmp_path / "run")
    paths = {"TMP": tmp_path, "DATA": tmp_path / "data", "RUN": tmp_path / "run", "FILE": tmp_path / "notes.txt"}
    paths["FILE"].write_text("not what the command wants\n")
    if row in SETUP:
        SETUP[row](paths)
    monkeypatch.chdir(tmp_path)
    # a row's plugin module is imported from TMP: Python's own bytecode cache is not densemtl writing
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    for key, value in ENV.get(row, {}).items():
        monkeypatch.setenv(key, value)
    before = _snapshot(tmp_path)
    argv = [PLACEHOLDER.sub(lambda m: str(paths[m.group(1)]), arg) for arg in shlex.split(command)]
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == status, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    assert expected_pattern(message, paths).fullmatch(err.rstrip("\n")), err
    assert _snapshot(tmp_path) == before  # nothing written, created or overwritten


# -- what the table cannot show: inputs that are accepted, and faults a test must provoke -----------
def test_unquoted_exponent_in_yaml_is_a_number(tmp_path: Path) -> None:
    from densemtl.training.config import resolve_config

    conf = tmp_path / "c.yaml"
    conf.write_text("lr: 1e-3\nepochs: 1e1\nweight_decay: '0'\n")  # PyYAML reads 1e-3 as a string
    cfg = resolve_config(yaml=conf)
    assert (cfg.lr, cfg.epochs, cfg.weight_decay) == (1e-3, 10, 0.0)


def test_unreadable_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("epochs: 1\n")

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)  # root reads any mode, so refuse it here
    assert main(["train", "--config", str(conf), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == f"densemtl: error: config file {conf} cannot be read (Permission denied)\n"
    assert not (tmp_path / "run").exists()


def test_data_check_reads_every_file_and_warns_on_unusable_depth(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_run / "data", data)
    assert main(["data", "check", "--data-root", str(data)]) == 0
    out = capsys.readouterr().out
    assert "train: 4 samples" in out and "val: 2 samples" in out and "warning" not in out
    for i in (1, 2):  # some negative readings, and a map with no valid pixel: read as invalid, not refused
        p = data / "train" / "depth" / f"{i}.npy"
        d = np.load(p)
        d[:4] = -1.0
        np.save(p, d if i == 1 else -np.abs(d))
    assert main(["data", "check", "--data-root", str(data)]) == 0
    out = capsys.readouterr().out
    assert "warning: 2 depth files hold negative" in out and "warning: 1 depth files have no valid pixel" in out


def test_normals_slightly_off_unit_are_accepted(tiny_run: Path, tmp_path: Path) -> None:
    """Resizing leaves some short normals at edges: a few percent are tolerated, ×100 is not."""
    from densemtl import data as datasets

    shutil.copytree(tiny_run / "data", tmp_path / "data")
    p = tmp_path / "data" / "train" / "normal" / "0.npy"
    n = np.load(p)
    n[0, :20] *= 0.5  # 20 of 1280 pixels (1.6 %) at length 0.5
    np.save(p, n)
    ds = datasets.create("nyuv2", "train", root=str(tmp_path / "data"))
    assert ds.scan()["samples"] == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("arch", "knobs"),
    [
        ("segnet", {"depth_stages": 4}),
        ("mtan", {"depth_stages": 4}),
        ("crossstitch", {"depth_stages": 4}),
        ("vmsanet", {"depth_stages": 4, "scales": (2,)}),
        ("single", {"base_args": {"width": 0.125, "depth_stages": 4}}),
        ("hps", {}),
    ],
)
def test_min_input_side_is_what_the_forward_takes(arch: str, knobs: dict) -> None:
    from densemtl import models

    torch.manual_seed(0)
    tiny = {**models.MODELS.tiny(arch), **knobs}
    model = models.create(arch, {"seg": 3, "depth": 1}, **tiny).eval()
    side = model.min_input_side()
    with torch.no_grad():
        assert model(torch.rand(1, 3, side, side + 3))["seg"].shape[-2:] == (side, side + 3)
        if side > 1:
            with pytest.raises(ValueError):
                model(torch.rand(1, 3, side - 1, side + 3))


@pytest.mark.parametrize(
    ("fault", "line"),
    [
        (lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 74.50 GiB"), "out of GPU memory"),
        (MemoryError, "out of memory"),
    ],
)
def test_running_out_of_memory_is_one_line_exit_1(
    fault: Callable[[], BaseException], line: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from densemtl.cli import inspect_cmd

    def run_out(args: object) -> int:
        raise fault()

    monkeypatch.setattr(inspect_cmd, "run_eval", run_out)
    assert main(["eval", "--checkpoint", "x.pt"]) == 1
    assert capsys.readouterr().err == f"densemtl: error: {line}; use a smaller --size or --batch-size\n"

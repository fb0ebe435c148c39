"""The package builds a wheel that installs and trains outside the source tree.

A copy of the project (pyproject.toml, README.md, src/) is built with ``python -m build --wheel
--no-isolation`` (no network: the build backend is the venv's setuptools), installed with
``pip install --no-deps --target SITE``, and run from an empty folder with only SITE on
PYTHONPATH: the package imported is the installed one, not src/, and a tiny run trains.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import densemtl

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{args}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a clean copy of the project (the source tree gets no build/ or egg-info)."""
    base = tmp_path_factory.mktemp("wheel")
    project = base / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(base / "dist")], project)
    (whl,) = (base / "dist").glob("densemtl-*.whl")
    return whl


def test_wheel_holds_the_package_and_its_data(wheel: Path) -> None:
    assert wheel.name.startswith(f"densemtl-{densemtl.__version__}-")  # one version, densemtl.__version__
    names = set(zipfile.ZipFile(wheel).namelist())
    src = ROOT / "src"
    files = {
        p.relative_to(src).as_posix()
        for p in (src / "densemtl").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert "densemtl/py.typed" in files
    assert files <= names, sorted(files - names)  # every module and data file the package reads
    assert not any(n.startswith(("tests/", "src/")) for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "densemtl = densemtl.cli.main:main" in zipfile.ZipFile(wheel).read(meta).decode()


@pytest.mark.slow
def test_installed_wheel_trains_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    site, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], work)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    where = _run([sys.executable, "-c", "import densemtl; print(densemtl.__file__)"], work, env).stdout.strip()
    assert Path(where).resolve().is_relative_to(site.resolve()), where
    version = _run([sys.executable, "-m", "densemtl.cli.main", "--version"], work, env).stdout.strip()
    assert version == f"densemtl {densemtl.__version__}"
    tiny = ["--size", "32x40", "--n-train", "8", "--n-val", "4", "--batch-size", "4", "--epochs", "1", "--quiet"]
    tiny += ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--out", "run"]
    _run([sys.executable, "-m", "densemtl.cli.main", "train", *tiny], work, env)
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["epochs"] == 1 and (work / "run" / "checkpoints" / "last.pt").is_file()
    assert (work / "run" / "plots" / "metrics.png").is_file()

"""LibMTL's method names (``Nash_MTL``, ``Aligned_MTL``, ``GradVac``, ...) are densemtl's: the
registry matches names in any case and without underscores or dashes, and config.yaml holds the
canonical name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from densemtl import data, models
from densemtl.balancing import LIBMTL_NAMES, METHODS
from densemtl.cli.main import main
from densemtl.errors import ConfigError
from densemtl.registry import Registry, squash
from densemtl.training.config import resolve_config, resume_config, save_yaml

pytestmark = pytest.mark.usefixtures("no_plots")

#: LibMTL/weighting/__init__.py (median-research-group/LibMTL) -> densemtl's registered name
LIBMTL = {
    "EW": "ew",
    "GradNorm": "gradnorm",
    "MGDA": "mgda",
    "UW": "uw",
    "DWA": "dwa",
    "GLS": "gls",
    "GradDrop": "graddrop",
    "PCGrad": "pcgrad",
    "GradVac": "gradvac",
    "IMTL": "imtl",
    "CAGrad": "cagrad",
    "Nash_MTL": "nashmtl",
    "RLW": "rlw",
    "MoCo": "moco",
    "Aligned_MTL": "alignedmtl",
    "DB_MTL": "dbmtl",
    "STCH": "stch",
    "ExcessMTL": "excessmtl",
    "FairGrad": "fairgrad",
    "FAMO": "famo",
    "MoDo": "modo",
    "SDMGrad": "sdmgrad",
    "UPGrad": "upgrad",
}


def test_every_libmtl_name_is_a_method() -> None:
    assert set(LIBMTL_NAMES) == set(LIBMTL)
    for name, ours in LIBMTL.items():
        assert METHODS.canonical(name) == ours
        assert resolve_config({"method": name}).method == ours
        assert METHODS.get(name) is METHODS.get(ours)
    assert METHODS.canonical("nash-mtl") == METHODS.canonical("NASH_mtl") == "nashmtl"
    assert METHODS.canonical("IMTL_G") == "imtl" and METHODS.aliases("imtl") == ["imtlg"]


def test_config_yaml_holds_the_canonical_name(tmp_path: Path) -> None:
    save_yaml(resolve_config({"method": "Aligned_MTL", "epochs": 1}), tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["method"] == "alignedmtl"
    assert resume_config(tmp_path, {"method": "ALIGNED-MTL", "epochs": 2}).method == "alignedmtl"  # same method


def test_unknown_names_still_refused() -> None:
    with pytest.raises(ConfigError, match=r"^unknown method 'Nash_MTLX' \(did you mean 'nashmtl'\?\); valid: acg, "):
        METHODS.get("Nash_MTLX")
    assert resolve_config({"method": "mine"}).method == "mine"  # left for the registry (a plugin may add it)


def test_other_registries_and_ambiguity() -> None:
    assert data.DATASETS.canonical("Pascal-Context") == "pascal_context"
    assert models.MODELS.canonical("SegNet") == "segnet"
    reg: Registry[int] = Registry("thing")
    reg.register("a_b")(lambda: 1)
    reg.register("ab")(lambda: 2)
    assert reg.find("a_b") == "a_b" and reg.find("AB") == "ab" and reg.find("a-b") is None  # two match: none
    reg.alias("Other_Name", "ab")
    assert reg.create("other-name") == 2 and squash("Other_Name") == "othername"
    reg.unregister("AB")
    assert reg.find("othername") is None and reg.available() == ["a_b"]
    with pytest.raises(ConfigError, match="unknown thing 'zz'"):
        reg.alias("x", "zz")


def test_cli_run_with_a_libmtl_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    args = ["--size", "32x40", "--n-train", "4", "--n-val", "4", "--batch-size", "4", "--epochs", "0", "--quiet"]
    assert main(["train", *args, "--arch-arg", "width=0.125", "--method", "Nash_MTL", "--out", str(run)]) == 0
    assert "with nashmtl on synthetic" in capsys.readouterr().out
    assert yaml.safe_load((run / "config.yaml").read_text())["method"] == "nashmtl"

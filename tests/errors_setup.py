"""``SETUP`` of the rows of docs/errors.md (imported by tests/test_errors_table.py): for each row id,
what to break under the placeholders ``TMP``, ``DATA``, ``RUN`` and ``FILE`` before its command runs.
The rows of the section on data claims and predict's inputs keep theirs in errors_setup_claims.py."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from densemtl.cli.main import main
from densemtl.data.writer import synthesize
from errors_setup_claims import CLAIMS_SETUP
from errors_setup_plugins import PLUGIN_SETUP


# -- what each row breaks --------------------------------------------------------------------------
def _npy(paths: dict[str, Path], rel: str) -> Path:
    return paths["DATA"] / rel


def _rewrite(rel: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, Path]], None]:
    def setup(paths: dict[str, Path]) -> None:
        p = _npy(paths, rel)
        np.save(p, fn(np.load(p)))

    return setup


def _every(folder: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, Path]], None]:
    def setup(paths: dict[str, Path]) -> None:
        for p in sorted((paths["DATA"] / folder).glob("*.npy")):
            np.save(p, fn(np.load(p)))

    return setup


def _write(rel: str, content: bytes | str) -> Callable[[dict[str, Path]], None]:
    def setup(paths: dict[str, Path]) -> None:
        p = paths["TMP"] / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def _truncate(rel: str, keep: float) -> Callable[[dict[str, Path]], None]:
    def setup(paths: dict[str, Path]) -> None:
        p = paths["TMP"] / rel
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])

    return setup


def _checkpoint(edit: Callable[[dict], None]) -> Callable[[dict[str, Path]], None]:
    def setup(paths: dict[str, Path]) -> None:
        p = paths["RUN"] / "checkpoints" / "last.pt"
        state = torch.load(p, map_location="cpu", weights_only=True)
        edit(state)
        torch.save(state, p)

    return setup


def _meta(edit: Callable[[dict], None]) -> Callable[[dict[str, Path]], None]:
    def setup(paths: dict[str, Path]) -> None:
        p = paths["DATA"] / "densemtl.json"
        meta = json.loads(p.read_text())
        edit(meta)
        p.write_text(json.dumps(meta))

    return setup


class _RunsCode:
    """Unpickling this would run ``touch``: the file appearing would fail the "nothing written" check."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _pickle_payload(paths: dict[str, Path]) -> None:
    p = paths["RUN"] / "checkpoints" / "last.pt"
    state = torch.load(p, map_location="cpu", weights_only=True)
    state["extra"] = _RunsCode(paths["TMP"] / "pwned")
    torch.save(state, p)


def _same_stem(paths: dict[str, Path]) -> None:
    img = np.random.default_rng(0).random((32, 40, 3)).astype(np.float32)
    (paths["TMP"] / "sub").mkdir()
    np.save(paths["TMP"] / "a.npy", img)
    np.save(paths["TMP"] / "sub" / "a.npy", img)


def _link(rel: str, target: str) -> Callable[[dict[str, Path]], None]:
    """``TMP/rel`` (its folder made) a symbolic link to ``TMP/target``."""

    def setup(paths: dict[str, Path]) -> None:
        p = paths["TMP"] / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(paths["TMP"] / target)

    return setup


def _plots_elsewhere(paths: dict[str, Path]) -> None:
    shutil.move(paths["RUN"] / "plots", paths["TMP"] / "elsewhere")
    (paths["RUN"] / "plots").symlink_to(paths["TMP"] / "elsewhere")


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


_W0 = "trunk.encoder.0.0.0.weight"  # the first weight of the table's SegNet


def _nan_weights(state: dict) -> None:
    for v in state["model"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))


def _group(key: str, value: object) -> Callable[[dict], None]:
    return lambda s: s["optimizer"]["param_groups"][0].__setitem__(key, value)


def _scale_width(state: dict) -> None:
    state["config"]["arch_args"]["width"] = 0.25


#: a plugin module that leaves a file behind when imported (the rows check that it never runs)
TRUSTMOD = "from pathlib import Path\n\nPath('trustmod-ran').write_text('imported')\n"
#: plugins that fail: their factories unregister themselves when called, so nothing outlives the row
NONEMOD = """from densemtl import models


@models.register("nonearch")
def nonearch(task_channels: dict, width: float = 1.0) -> None:
    models.MODELS.unregister("nonearch")
"""
RAISEMOD = """from densemtl import models


@models.register("raisearch")
def raisearch(task_channels: dict, width: float = 1.0) -> None:
    models.MODELS.unregister("raisearch")
    raise ValueError("width must be even")
"""

HALFMOD = """from densemtl import methods
from densemtl.balancing.base import Aggregator


@methods.register("halfmethod")
class HalfMethod(Aggregator):
    def __init__(self) -> None:
        super().__init__()
        methods.METHODS.unregister("halfmethod")
"""


def _imports(names: list[str]) -> Callable[[dict], None]:
    return lambda d: d["config"].__setitem__("imports", names)


def _run_imports(paths: dict[str, Path]) -> None:
    _write("trustmod.py", TRUSTMOD)(paths)
    p = paths["RUN"] / "config.yaml"
    p.write_text(p.read_text().replace("imports: []\n", "imports: [trustmod]\n"))
    assert "imports: [trustmod]" in p.read_text()


def _shared_export(paths: dict[str, Path]) -> None:
    from densemtl.training.checkpoint import export_safetensors

    _write("trustmod.py", TRUSTMOD)(paths)
    state = torch.load(paths["RUN"] / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    _imports(["trustmod", "this"])(state)
    export_safetensors(state, paths["TMP"] / "shared.safetensors")


def _export(edit: Callable[[dict], None] | None = None) -> Callable[[dict[str, Path]], None]:
    """``TMP/m.safetensors``, the run's export, with ``edit`` applied to its decoded metadata."""

    def setup(paths: dict[str, Path]) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file

        out = paths["TMP"] / "m.safetensors"
        assert main(["export", "--checkpoint", str(paths["RUN"]), "--out", str(out)]) == 0
        if edit is None:
            return
        with safe_open(str(out), framework="pt") as f:
            meta = dict(f.metadata())
            weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        decoded = {k: json.loads(v) for k, v in meta.items() if k != "format"}
        edit(decoded)
        metadata = {**{k: json.dumps(v) for k, v in decoded.items()}, "format": meta["format"]}
        save_file(weights, str(out), metadata=metadata)

    return setup


def _export_as_last(paths: dict[str, Path]) -> None:
    _export()(paths)
    (paths["TMP"] / "m.safetensors").replace(paths["RUN"] / "checkpoints" / "last.pt")


def _timm_file_in_config(state: dict) -> None:
    state["config"]["arch"] = "hps"
    state["config"]["arch_args"] = {"backbone": "timm:resnet10t", "backbone_args": {"checkpoint_path": "/etc/passwd"}}


SETUP: dict[str, Callable[[dict[str, Path]], None]] = {
    "import-run-config": _run_imports,
    "import-checkpoint": lambda p: (_write("trustmod.py", TRUSTMOD)(p), _checkpoint(_imports(["trustmod"]))(p)),
    "import-safetensors": _shared_export,
    "import-config-this": _write("c.yaml", "imports: [this]\n"),
    "import-resume": _run_imports,
    "import-grid": lambda p: (_write("trustmod.py", TRUSTMOD)(p), _write("g.yaml", "imports: [trustmod]\n")(p)),
    "import-bench-folder": lambda p: (
        _write("trustmod.py", TRUSTMOD)(p),
        _write("b/bench.yaml", "base:\n  imports: [trustmod]\narchs: [segnet]\n")(p),
    ),
    "plugin-exit": _write("exitmod.py", "import sys\nsys.exit(3)\n"),
    "plugin-import-raises": _write("brokenmod.py", "import os\n\nraise ValueError(f'no config for {__name__}')\n"),
    "plugin-factory-none": _write("nonemod.py", NONEMOD),
    "plugin-factory-raises": _write("raisemod.py", RAISEMOD),
    "plugin-method-protocol": _write("halfmod.py", HALFMOD),
    "config-binary": _write("bin.yaml", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01"),
    "yaml-invalid": _write("c.yaml", "lr: [1\n"),
    "yaml-list": _write("c.yaml", "- 1\n- 2\n"),
    "yaml-unknown-key": _write("c.yaml", "epochz: 3\n"),
    "yaml-not-number": _write("c.yaml", "lr: many\n"),
    "yaml-float-epochs": _write("c.yaml", "epochs: 2.5\n"),
    "yaml-bool": _write("c.yaml", "augment: 3\n"),
    "yaml-size": _write("c.yaml", "size: [16]\n"),
    "yaml-knobs": _write("c.yaml", "arch_args: 3\n"),
    "yaml-empty-value": _write("c.yaml", "epochs:\n"),
    "yaml-lr-string-negative": _write("c.yaml", "lr: -1e-3\n"),
    "split-missing": lambda p: shutil.rmtree(p["DATA"] / "val"),
    "file-empty": _write("data/train/image/0.npy", b""),
    "file-truncated": _truncate("data/train/depth/1.npy", 0.5),
    "file-not-npy": _write("data/train/normal/2.npy", "depth in metres\n"),
    "image-int": _rewrite("train/image/1.npy", lambda a: (a * 255).astype(np.int64)),
    "image-gray": _rewrite("train/image/1.npy", lambda a: a[..., 0]),
    "depth-size": _rewrite("train/depth/2.npy", lambda a: a[:16, :20]),
    "count-mismatch": lambda p: shutil.copy(_npy(p, "train/label/0.npy"), _npy(p, "train/label/4.npy")),
    "index-gap": lambda p: _npy(p, "train/depth/3.npy").rename(_npy(p, "train/depth/7.npy")),
    "stray-file": _write("data/train/image/notes.txt", "x"),
    "label-range": _rewrite("train/label/0.npy", lambda a: np.where(a == 1, 20.0, a).astype(a.dtype)),
    "label-255": _rewrite("train/label/0.npy", lambda a: np.where(a == 1, 255.0, a).astype(a.dtype)),
    "label-fraction": _rewrite("train/label/0.npy", lambda a: a + 0.5),
    "image-nan": _rewrite("train/image/0.npy", lambda a: np.full_like(a, np.nan)),
    "normals-x100": _every("train/normal", lambda a: a * 100),
    "depth-negative": _every("train/depth", lambda a: -a),
    "meta-type": _meta(_set("num_classes", "seven")),
    "meta-names": _meta(_set("class_names", "floor")),
    "meta-not-json": _write("data/densemtl.json", "{num_classes: 7"),
    "check-label-late": _rewrite("val/label/1.npy", lambda a: np.where(a == 1, 9.0, a).astype(a.dtype)),
    "check-image-late": _rewrite("train/image/3.npy", lambda a: np.where(a > 0.5, np.inf, a)),
    "check-normals-late": _rewrite("val/normal/1.npy", lambda a: a * 100),
    "check-depth-negative": _every("val/depth", lambda a: -a),
    "ckpt-garbage": _write("x.pt", b"not a checkpoint at all"),
    "ckpt-truncated": _truncate("run/checkpoints/last.pt", 0.5),
    "ckpt-pickle": _pickle_payload,
    "ckpt-other-width": _checkpoint(_scale_width),
    "ckpt-no-tasks": _checkpoint(lambda s: s.pop("tasks")),
    "ckpt-task-set": _checkpoint(_set("tasks", ["seg", "depth"])),
    "ckpt-unknown-task": _checkpoint(_set("tasks", ["sge", "depth", "normal"])),
    "eval-classes": _meta(lambda m: m.update(num_classes=13, class_names=[f"c{i}" for i in range(13)])),
    "predict-not-image": _write("notes.png", "a text file named .png\n"),
    "predict-nan": lambda p: np.save(p["TMP"] / "nan.npy", np.full((32, 40, 3), np.nan, np.float32)),
    "predict-same-stem": _same_stem,
    "size-arch-data": lambda p: synthesize(p["TMP"] / "d16", 2, 1, (16, 20), 0),
    "ckpt-predict-pickle": lambda p: (_pickle_payload(p), _same_stem(p)),
    "eval-json-symlink": _link("m.json", "notes.txt"),
    "predict-out-exists": lambda p: (_same_stem(p), _write("pred/a_pred.png", "an earlier prediction")(p)),
    "predict-out-symlink": lambda p: (_same_stem(p), _link("pred/a_pred.png", "notes.txt")(p)),
    "resume-plots-symlink": _plots_elsewhere,
    "bench-symlink": _link("b/.lock", "notes.txt"),
    "predict-dir-empty": lambda p: (p["TMP"] / "empty").mkdir(),
    "ckpt-size-strings": _checkpoint(_set("size", ["a", "b"])),
    "ckpt-size-huge": _export(_set("size", [200000, 200000])),
    "ckpt-size-negative": _checkpoint(_set("size", [-64, 5])),
    "ckpt-num-classes-huge": _checkpoint(_set("num_classes", 2**31)),
    "ckpt-width-huge": _checkpoint(lambda s: s["config"]["arch_args"].__setitem__("width", 4096)),
    "ckpt-epoch": _checkpoint(_set("epoch", "abc")),
    "ckpt-epoch-fraction": _export(_set("epoch", 1.5)),
    "resume-safetensors": _export_as_last,
    "resume-no-optimizer": _checkpoint(lambda s: s.pop("optimizer")),
    "yaml-deep": _write("c.yaml", "arch_args: {x: " + "[" * 5000 + "]" * 5000 + "}\n"),
    "yaml-duplicate": _write("c.yaml", "epochs: 1\nlr: 0.1\nepochs: 3\n"),
    "yaml-size-float": _write("c.yaml", "size: [32.7, 40.9]\n"),
    "timm-ckpt-checkpoint-path": _checkpoint(_timm_file_in_config),
    "resume-optimizer-lr": _checkpoint(_group("lr", "fast")),
    "resume-scheduler-entry": _checkpoint(lambda s: s["scheduler"].__setitem__("step", 5)),
    "resume-rng": _checkpoint(_set("rng", {"python": 5})),
    "resume-guard": _checkpoint(_set("guard", [1, 2])),
    "resume-config-lr": _checkpoint(lambda s: s["config"].__setitem__("lr", "fast")),
    "resume-config-disagrees": _checkpoint(lambda s: s["config"].__setitem__("lr", 0.5)),
    "resume-weights-nan": _checkpoint(_nan_weights),
    "ckpt-weights-nan": _checkpoint(_nan_weights),
    "resume-history-lost": lambda p: (
        _checkpoint(lambda s: s.pop("history"))(p),
        (p["RUN"] / "metrics.jsonl").write_text('{"epoch": "zero"}\n'),
    ),
    "ckpt-int-weights": _checkpoint(lambda s: s["model"].__setitem__(_W0, s["model"][_W0].to(torch.int64))),
    **CLAIMS_SETUP,
    **PLUGIN_SETUP,
}

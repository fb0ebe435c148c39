"""metadata: every file of a run densemtl reads back (checkpoints .pt, the .safetensors export,
config.yaml, metrics.jsonl, summary.json), each field wrong in type, missing or absurd."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _util import Case, chain, drop_key, edit_ckpt, edit_export, edit_yaml, image, rgb, set_key, truncate, write

C = "metadata"
EVAL = ["eval", "--checkpoint", "RUN", "--n", "2"]
PRED = ["predict", "--checkpoint", "RUN", "--out", "OUT", "x.png"]
PRED_X = ["predict", "--checkpoint", "model.safetensors", "--out", "OUT", "x.png"]
EXPORT = ["export", "--checkpoint", "RUN", "--out", "m.safetensors"]
RESUME = ["train", "--resume", "--out", "RUN", "--epochs", "1", "--quiet"]
RUN_DATA = ("RUN", "DATA")
#: why a damaged metrics.jsonl is accepted on resume (was "refuse": corrected in issue 21's second wave)
HISTORY_NOTE = (
    "accept: last.pt holds the history, which rewrites metrics.jsonl on resume (a torn line after a kill "
    "must not stop a run; tests/test_resume.py); without it in last.pt, a lost record is refused"
)


def _img(tmp: Path) -> None:
    image(tmp / "x.png", rgb())


def ck(fn: Callable[[dict], Any]):
    return lambda tmp: edit_ckpt(tmp / "RUN", fn)


def ck_cfg(key: str, value: Any):
    return ck(lambda s: set_key(s["config"], key, value) and None)


def xm(fn: Callable[[dict], dict]):
    return lambda tmp: edit_export(tmp / "model.safetensors", meta=fn)


def xt(fn: Callable[[dict], dict]):
    return lambda tmp: edit_export(tmp / "model.safetensors", tensors=fn)


def cfg(key: str, value: Any):
    return lambda tmp: edit_yaml(tmp / "RUN" / "config.yaml", lambda d: set_key(d, key, value))


def sub_yaml(old: str, new: str):
    def setup(tmp: Path) -> None:
        path = tmp / "RUN" / "config.yaml"
        path.write_text(path.read_text().replace(old, new))

    return setup


def raw(rel: str, content: str | bytes):
    return lambda tmp: write(tmp / rel, content)


def _first_tensor(fn: Callable[[Any], Any]):
    def edit(state: dict) -> None:
        key = next(iter(state["model"]))
        state["model"][key] = fn(state["model"][key])

    return edit


def _nan_weights(state: dict) -> None:
    for v in state["model"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))


def _x_first(fn: Callable[[Any], Any]):
    def edit(ts: dict) -> dict:
        key = sorted(ts)[0]
        ts[key] = fn(ts[key])
        return ts

    return edit


def _x_extra(ts: dict) -> dict:
    import torch

    ts["evil.weight"] = torch.zeros(3)
    return ts


def _x_half(ts: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in ts.items()}


def _x_header(tmp: Path) -> None:
    path = tmp / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[:8] = (2**60).to_bytes(8, "little")
    path.write_bytes(bytes(data))


def _pickle_payload(tmp: Path) -> None:
    import pickle

    class Marker:  # pickled by reference to a class the loading process does not have
        pass

    Marker.__module__ = "probe_planted_module"
    for name in ("last.pt", "best.pt"):
        (tmp / "RUN" / "checkpoints" / name).write_bytes(pickle.dumps({"model": Marker.__qualname__, "x": object()}))


def _trunc_ckpts(tmp: Path) -> None:
    for name in ("last.pt", "best.pt"):
        truncate(tmp / "RUN" / "checkpoints" / name, 0.5)


def _empty_ckpts(tmp: Path) -> None:
    for name in ("last.pt", "best.pt"):
        (tmp / "RUN" / "checkpoints" / name).write_bytes(b"")


def _metrics(lines: list[str]):
    return raw("RUN/metrics.jsonl", "".join(f"{x}\n" for x in lines))


def _metrics_edit(fn: Callable[[dict], Any]):
    def setup(tmp: Path) -> None:
        path = tmp / "RUN" / "metrics.jsonl"
        recs = [json.loads(x) for x in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(fn(r)) + "\n" for r in recs))

    return setup


def pt_cases() -> list[Case]:
    return [
        Case("pt-truncated", C, EVAL, "refuse", _trunc_ckpts, RUN_DATA),
        Case("pt-zero-bytes", C, EVAL, "refuse", _empty_ckpts, RUN_DATA),
        Case("pt-foreign-pickle", C, EVAL, "refuse", _pickle_payload, RUN_DATA),
        Case("pt-no-model", C, EVAL, "refuse", ck(lambda s: drop_key(s, "model") and None), RUN_DATA),
        Case("pt-no-config", C, EVAL, "refuse", ck(lambda s: drop_key(s, "config") and None), RUN_DATA),
        Case("pt-is-list", C, EVAL, "refuse", ck(lambda s: [s]), RUN_DATA),
        Case("pt-arch-unknown", C, EVAL, "refuse", ck_cfg("arch", "nosucharch"), RUN_DATA),
        Case("pt-arch-int", C, EVAL, "refuse", ck_cfg("arch", 7), RUN_DATA),
        Case("pt-arch-args-width-str", C, EVAL, "refuse", ck_cfg("arch_args", {"width": "abc"}), RUN_DATA),
        Case("pt-arch-args-list", C, EVAL, "refuse", ck_cfg("arch_args", [1, 2]), RUN_DATA),
        Case("pt-tasks-empty", C, EVAL, "refuse", ck(lambda s: set_key(s, "tasks", []) and None), RUN_DATA),
        Case(
            "pt-tasks-unknown",
            C,
            EVAL,
            "refuse",
            ck(lambda s: set_key(s, "tasks", ["seg", "bogus"]) and None),
            RUN_DATA,
        ),
        Case(
            "pt-tasks-string",
            C,
            PRED,
            "refuse",
            chain(ck(lambda s: set_key(s, "tasks", "seg") and None), _img),
            ("RUN",),
        ),
        Case(
            "pt-num-classes-0",
            C,
            PRED,
            "refuse",
            chain(ck(lambda s: set_key(s, "num_classes", 0) and None), _img),
            ("RUN",),
        ),
        Case("pt-num-classes-neg", C, EVAL, "refuse", ck(lambda s: set_key(s, "num_classes", -3) and None), RUN_DATA),
        Case(
            "pt-num-classes-float",
            C,
            PRED,
            "refuse",
            chain(ck(lambda s: set_key(s, "num_classes", 7.5) and None), _img),
            ("RUN",),
        ),
        Case(
            "pt-tensor-wrong-shape",
            C,
            EVAL,
            "refuse",
            ck(_first_tensor(lambda t: t.new_zeros(t.numel() + 1))),
            RUN_DATA,
        ),
        Case("pt-weights-nan", C, EVAL, "refuse", ck(_nan_weights), RUN_DATA, note="arguable: NaN metrics, one line"),
        Case("pt-dataset-unknown", C, EVAL, "refuse", ck_cfg("dataset", "nope"), RUN_DATA),
        Case("pt-data-root-int", C, EVAL, "refuse", ck_cfg("data_root", 5), RUN_DATA),
        Case("pt-resume-step-neg", C, RESUME, "refuse", ck(lambda s: set_key(s, "step", -5) and None), RUN_DATA),
        Case(
            "pt-resume-history-str", C, RESUME, "refuse", ck(lambda s: set_key(s, "history", "abc") and None), RUN_DATA
        ),
        Case(
            "pt-resume-optimizer-empty",
            C,
            RESUME,
            "refuse",
            ck(lambda s: set_key(s, "optimizer", {"state": {}, "param_groups": []}) and None),
            RUN_DATA,
        ),
        Case(
            "pt-resume-rng-garbage",
            C,
            RESUME,
            "refuse",
            ck(lambda s: set_key(s, "rng", {"python": 5}) and None),
            RUN_DATA,
        ),
        Case(
            "pt-resume-elapsed-str",
            C,
            RESUME,
            "refuse",
            ck(lambda s: set_key(s, "elapsed_s", "long") and None),
            RUN_DATA,
        ),
        Case("pt-export-guard-list", C, RESUME, "refuse", ck(lambda s: set_key(s, "guard", [1, 2]) and None), RUN_DATA),
        Case("pt-config-lr-str", C, RESUME, "refuse", ck_cfg("lr", "fast"), RUN_DATA),
        Case(
            "checkpoints-dir-missing",
            C,
            EVAL,
            "refuse",
            lambda t: __import__("shutil").rmtree(t / "RUN/checkpoints"),
            RUN_DATA,
        ),
        Case("checkpoint-is-data-dir", C, ["eval", "--checkpoint", "DATA"], "refuse", None, ("DATA",)),
    ]


def export_cases() -> list[Case]:
    X = ("EXPORT",)

    def x(name: str, setup: Any, expect: str = "refuse", note: str = "") -> Case:
        return Case(name, C, PRED_X, expect, chain(setup, _img), X, note=note)

    return [
        x("st-no-format", xm(lambda m: drop_key(m, "format"))),
        x("st-format-other", xm(lambda m: set_key(m, "format", "pytorch"))),
        x("st-config-not-json", xm(lambda m: set_key(m, "config", "{oops"))),
        x("st-config-list", xm(lambda m: set_key(m, "config", "[1, 2]"))),
        x("st-tasks-string", xm(lambda m: set_key(m, "tasks", '"seg"'))),
        x("st-tasks-missing", xm(lambda m: drop_key(m, "tasks"))),
        x("st-arch-number", xm(lambda m: set_key(m, "arch", "123"))),
        x("st-num-classes-string", xm(lambda m: set_key(m, "num_classes", '"7"'))),
        x("st-num-classes-zero", xm(lambda m: set_key(m, "num_classes", "0"))),
        x("st-epoch-negative", xm(lambda m: set_key(m, "epoch", "-4"))),
        x(
            "st-config-arch-args-nan",
            xm(lambda m: set_key(m, "config", m["config"].replace('"width": 0.125', '"width": NaN'))),
        ),
        x("st-truncated", lambda t: truncate(t / "model.safetensors", 0.7)),
        x("st-header-2-60", _x_header),
        x("st-extra-tensor", xt(_x_extra)),
        x("st-missing-tensor", xt(lambda ts: {k: v for k, v in sorted(ts.items())[1:]})),
        x("st-tensor-wrong-shape", xt(_x_first(lambda t: t.new_zeros(t.numel() + 2)))),
        x("st-float16", xt(_x_half), "accept", note="arguable: half weights load into a float model"),
        x("st-int-weights", xt(_x_first(lambda t: t.to(__import__("torch").int64)))),
        Case(
            "st-export-an-export",
            C,
            ["export", "--checkpoint", "model.safetensors", "--out", "m2.safetensors"],
            "accept",
            None,
            X,
            note="arguable: re-export of an export",
        ),
        Case(
            "st-eval-export",
            C,
            ["eval", "--checkpoint", "model.safetensors", "--dataset", "nyuv2", "--data-root", "DATA", "--n", "2"],
            "accept",
            None,
            ("EXPORT", "DATA"),
        ),
    ]


def run_file_cases() -> list[Case]:
    return [
        Case("yaml-missing", C, RESUME, "refuse", lambda t: (t / "RUN/config.yaml").unlink(), RUN_DATA),
        Case("yaml-invalid", C, RESUME, "refuse", raw("RUN/config.yaml", "arch: [segnet\n"), RUN_DATA),
        Case("yaml-is-list", C, RESUME, "refuse", raw("RUN/config.yaml", "- 1\n- 2\n"), RUN_DATA),
        Case("yaml-binary", C, RESUME, "refuse", raw("RUN/config.yaml", bytes(range(256))), RUN_DATA),
        Case("yaml-epochs-neg", C, RESUME, "refuse", cfg("epochs", -1), RUN_DATA),
        Case("yaml-batch-size-str", C, RESUME, "refuse", cfg("batch_size", "two"), RUN_DATA),
        Case("yaml-unknown-key", C, RESUME, "refuse", cfg("colour", "blue"), RUN_DATA),
        Case("yaml-seed-inf", C, RESUME, "refuse", sub_yaml("seed: 0", "seed: .inf"), RUN_DATA),
        Case("yaml-arch-args-list", C, RESUME, "refuse", cfg("arch_args", [1, 2]), RUN_DATA),
        Case("yaml-lr-nan", C, RESUME, "refuse", sub_yaml("lr: 0.002", "lr: .nan"), RUN_DATA),
        Case("yaml-size-neg", C, RESUME, "refuse", cfg("size", [-32, 40]), RUN_DATA),
        Case("yaml-tasks-int", C, RESUME, "refuse", cfg("tasks", 5), RUN_DATA),
        Case("yaml-data-root-missing", C, RESUME, "refuse", cfg("data_root", "NOWHERE"), RUN_DATA),
        Case("yaml-method-dict", C, RESUME, "refuse", cfg("method", {"name": "ew"}), RUN_DATA),
        Case(
            "yaml-disagrees-with-pt",
            C,
            RESUME,
            "refuse",
            cfg("arch", "mtan"),
            RUN_DATA,
            note="config.yaml says mtan, the checkpoint holds a segnet",
        ),
        Case(
            "yaml-is-folder",
            C,
            RESUME,
            "refuse",
            lambda t: ((t / "RUN/config.yaml").unlink(), (t / "RUN/config.yaml").mkdir()),
            RUN_DATA,
        ),
        Case(
            "metrics-garbage-line",
            C,
            RESUME,
            "accept",
            lambda t: (t / "RUN/metrics.jsonl").write_text("not json\n" + (t / "RUN/metrics.jsonl").read_text()),
            RUN_DATA,
            note=HISTORY_NOTE,
        ),
        Case(
            "metrics-epoch-str",
            C,
            RESUME,
            "accept",
            _metrics_edit(lambda r: set_key(r, "epoch", "abc")),
            RUN_DATA,
            note=HISTORY_NOTE,
        ),
        Case("metrics-record-list", C, RESUME, "accept", _metrics(["[1, 2, 3]"]), RUN_DATA, note=HISTORY_NOTE),
        Case(
            "metrics-is-folder",
            C,
            RESUME,
            "refuse",
            lambda t: ((t / "RUN/metrics.jsonl").unlink(), (t / "RUN/metrics.jsonl").mkdir()),
            RUN_DATA,
        ),
        Case(
            "metrics-no-history-in-pt",
            C,
            RESUME,
            "refuse",
            chain(ck(lambda s: drop_key(s, "history") and None), _metrics(['{"epoch": "zero"}'])),
            RUN_DATA,
        ),
        Case(
            "summary-garbage-eval",
            C,
            EVAL,
            "accept",
            raw("RUN/summary.json", "{{{"),
            RUN_DATA,
            note="eval does not need summary.json",
        ),
        Case(
            "summary-is-folder-resume",
            C,
            RESUME,
            "refuse",
            lambda t: ((t / "RUN/summary.json").unlink(), (t / "RUN/summary.json").mkdir()),
            RUN_DATA,
            note="was accept (arguable): the run cannot write summary.json there, so it is refused before training",
        ),
        Case(
            "export-out-existing-folder",
            C,
            ["export", "--checkpoint", "RUN", "--out", "DATA"],
            "refuse",
            None,
            ("RUN", "DATA"),
        ),
        Case("export-out-empty", C, ["export", "--checkpoint", "RUN", "--out", ""], "refuse", None, ("RUN",)),
        Case(
            "export-out-txt",
            C,
            ["export", "--checkpoint", "RUN", "--out", "model.txt"],
            "accept",
            None,
            ("RUN",),
            note="arguable: a .safetensors file named .txt",
        ),
        Case(
            "export-weights-nan",
            C,
            EXPORT,
            "refuse",
            ck(_nan_weights),
            ("RUN",),
            note="arguable: exporting NaN weights",
        ),
        Case(
            "pt-array-in-config",
            C,
            EVAL,
            "refuse",
            ck_cfg("batch_size", np.int64(2)),
            RUN_DATA,
            note="a numpy scalar in the pickled config (weights_only refuses)",
        ),
    ]


def cases() -> list[Case]:
    return [*pt_cases(), *export_cases(), *run_file_cases()]

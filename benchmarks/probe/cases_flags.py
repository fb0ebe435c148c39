"""flags and env: every subcommand's flags with hostile values (negative, zero, huge, NaN, empty,
unicode), and the DENSEMTL_* environment variables."""

from __future__ import annotations

from pathlib import Path

from _util import SEGNET_TINY, SYNTH_TRAIN, Case, image, rgb, write

F, E = "flags", "env"
TRAIN = [*SYNTH_TRAIN, *SEGNET_TINY, "--out", "R"]
EVAL = ["eval", "--checkpoint", "RUN"]
PRED = ["predict", "--checkpoint", "RUN", "--out", "OUT", "x.png"]
SPEED = [
    "speed",
    "--methods",
    "ew",
    "--size",
    "32x40",
    "--batch-size",
    "2",
    "--repeats",
    "1",
    "--warmup",
    "0",
    "--quiet",
    *SEGNET_TINY,
]
BENCH = [
    "bench",
    "--n-train",
    "4",
    "--n-val",
    "2",
    "--size",
    "32x40",
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--out",
    "B",
]


def _img(tmp: Path) -> None:
    image(tmp / "x.png", rgb())


def train(name: str, *extra: str, expect: str = "refuse", note: str = "") -> Case:
    return Case(f"train{name}", F, [*TRAIN, *extra], expect, note=note)


def flags() -> list[Case]:
    R, RD = ("RUN",), ("RUN", "DATA")
    c = [
        train("--epochs-neg", "--epochs", "-1"),
        train("--epochs-1e3", "--epochs", "1e3"),
        train("--batch-size-0", "--batch-size", "0"),
        train("--batch-size-huge", "--batch-size", "100000", note="more than the 2 samples"),
        train("--lr-nan", "--lr", "nan"),
        train("--lr-inf", "--lr", "inf"),
        train("--lr-neg", "--lr", "-0.1"),
        train("--weight-decay-neg", "--weight-decay", "-1"),
        train("--seed-neg", "--seed", "-1"),
        train("--seed-2^40", "--seed", str(2**40)),
        train("--size-0x0", "--size", "0x0"),
        train("--size-32x", "--size", "32x"),
        train(
            "--size-fullwidth-digits",
            "--size",
            "３２x４０",
            expect="refuse",
            note="int() takes fullwidth digits; arguable",
        ),
        train("--size-huge", "--size", "100000x100000"),
        train("--tasks-empty", "--tasks", ""),
        train(
            "--tasks-dup",
            "--tasks",
            "seg,seg",
            note="corrected to refuse: a repeated task is a typo (which list was meant?); parse_tasks names it",
        ),
        train("--tasks-unicode", "--tasks", "ség"),
        train("--n-train-0", "--n-train", "0"),
        train("--n-val-neg", "--n-val", "-2"),
        train("--device-cuda-99", "--device", "cuda:99"),
        train("--device-empty", "--device", ""),
        train("--device-tpu", "--device", "tpu"),
        train("--checkpoint-every-neg", "--checkpoint-every", "-1"),
        train("--skip-nonfinite-neg", "--skip-nonfinite", "-1"),
        train("--diagnostics-every-neg", "--diagnostics-every", "-5"),
        train("--arch-arg-width-nan", "--arch-arg", "width=nan"),
        train("--arch-arg-width-neg", "--arch-arg", "width=-1"),
        train("--arch-arg-no-key", "--arch-arg", "=3"),
        train("--arch-arg-no-equals", "--arch-arg", "width"),
        train("--method-arg-bogus", "--method-arg", "bogus=1"),
        train("--data-arg-tasks-empty", "--data-arg", "tasks="),
        train("--recompute-every-0", "--recompute-every", "0"),
        train("--grad-mode-bogus", "--grad-mode", "bogus"),
        train("--peer-mimicry-nan", "--peer-arch", "segnet", "--mimicry-weight", "nan"),
        train("--peer-temperature-0", "--peer-arch", "segnet", "--mimicry-temperature", "0"),
        train("--alpha-warmup-neg", "--peer-arch", "segnet", "--alpha-warmup-epochs", "-3"),
        train("--lr-gamma-neg", "--lr-gamma", "-2"),
        train("--lr-step-0", "--lr-step", "0"),
        train("--warmup-neg", "--warmup-epochs", "-1"),
        train("--num-classes-0", "--num-classes", "0"),
        Case("train--config-missing", F, [*TRAIN, "--config", "nope.yaml"], "refuse"),
        Case("train--config-dir", F, [*TRAIN, "--config", "cfgdir"], "refuse", lambda t: (t / "cfgdir").mkdir()),
        Case("train--config-empty", F, [*TRAIN, "--config", "c.yaml"], "accept", lambda t: write(t / "c.yaml", "")),
        Case(
            "train--config-scalar", F, [*TRAIN, "--config", "c.yaml"], "refuse", lambda t: write(t / "c.yaml", "42\n")
        ),
        Case("train--out-is-file", F, [*SYNTH_TRAIN, "--out", "f"], "refuse", lambda t: write(t / "f", "x\n")),
        Case("train--resume-no-run", F, [*SYNTH_TRAIN, "--out", "R", "--resume"], "refuse"),
        Case("train--resume-no-out", F, ["train", "--resume", "--epochs", "1"], "refuse"),
        Case("eval--n-0", F, [*EVAL, "--n", "0"], "refuse", None, RD),
        Case("eval--n-neg", F, [*EVAL, "--n", "-1"], "refuse", None, RD),
        Case("eval--batch-size-0", F, [*EVAL, "--batch-size", "0"], "refuse", None, RD),
        Case("eval--size-1x1", F, [*EVAL, "--size", "1x1"], "refuse", None, RD),
        Case("eval--json-empty", F, [*EVAL, "--json", ""], "refuse", None, RD),
        Case("eval--json-under-file", F, [*EVAL, "--json", "f/m.json"], "refuse", lambda t: write(t / "f", "x\n"), RD),
        Case("eval--dataset-unknown", F, [*EVAL, "--dataset", "imagenet"], "refuse", None, RD),
        Case("eval--data-root-missing", F, [*EVAL, "--data-root", "NOWHERE"], "refuse", None, RD),
        Case("predict--size-0x40", F, [*PRED, "--size", "0x40"], "refuse", _img, R),
        Case("predict--size-neg", F, [*PRED, "--size", "32x-40"], "refuse", _img, R),
        Case("predict--size-nan", F, [*PRED, "--size", "nanxnan"], "refuse", _img, R),
        Case("predict--size-huge", F, [*PRED, "--size", "65536x65536"], "refuse", _img, R),
        Case("predict--device-bogus", F, [*PRED, "--device", "gpu0"], "refuse", _img, R),
        Case("predict--checkpoint-empty", F, ["predict", "--checkpoint", "", "--out", "OUT", "x.png"], "refuse", _img),
        Case("predict--out-empty", F, ["predict", "--checkpoint", "RUN", "--out", "", "x.png"], "refuse", _img, R),
        Case("synth--n-train-0", F, ["data", "synth", "--out", "D", "--n-train", "0"], "refuse"),
        Case(
            "synth--size-1x1",
            F,
            ["data", "synth", "--out", "D", "--size", "1x1", "--n-train", "1", "--n-val", "1"],
            "refuse",
        ),
        Case("synth--size-huge", F, ["data", "synth", "--out", "D", "--size", "100000x100000"], "refuse"),
        Case("synth--seed-neg", F, ["data", "synth", "--out", "D", "--seed", "-1"], "refuse"),
        Case("synth--out-empty", F, ["data", "synth", "--out", ""], "refuse"),
        Case("synth-nyud--size-8x8", F, ["data", "synth", "--layout", "nyud", "--out", "D", "--size", "8x8"], "refuse"),
        Case("check--data-root-missing", F, ["data", "check", "--data-root", "NOWHERE"], "refuse"),
        Case(
            "check--dataset-synthetic",
            F,
            ["data", "check", "--dataset", "synthetic", "--data-root", "DATA"],
            "refuse",
            None,
            ("DATA",),
            note="synthetic has no files to check",
        ),
        Case(
            "check--num-classes-neg",
            F,
            ["data", "check", "--data-root", "DATA", "--num-classes", "-1"],
            "refuse",
            None,
            ("DATA",),
        ),
        Case("convert-raw-missing", F, ["data", "convert", "nyuv2", "RAW", "--out", "D"], "refuse"),
        Case(
            "convert-raw-empty",
            F,
            ["data", "convert", "nyuv2", "RAW", "--out", "D"],
            "refuse",
            lambda t: (t / "RAW").mkdir(),
        ),
        Case(
            "convert--size-0x0",
            F,
            ["data", "convert", "cityscapes", "RAW", "--out", "D", "--size", "0x0"],
            "refuse",
            lambda t: (t / "RAW").mkdir(),
        ),
        Case("list--verbose", F, ["list", "--verbose"], "accept"),
        Case("speed--repeats-0", F, [*SPEED, "--repeats", "0"], "refuse"),
        Case("speed--warmup-neg", F, [*SPEED, "--warmup", "-1"], "refuse"),
        Case("speed--batch-size-0", F, [*SPEED, "--batch-size", "0"], "refuse"),
        Case("speed--methods-empty", F, [*SPEED, "--methods", ""], "refuse"),
        Case("speed--methods-knob-bogus", F, [*SPEED, "--methods", "famo:bogus=1"], "refuse"),
        Case("speed--world-size-0", F, [*SPEED, "--world-size", "0"], "refuse"),
        Case("speed--world-size-1000", F, [*SPEED, "--world-size", "1000"], "refuse"),
        Case("speed--size-1x1", F, [*SPEED, "--size", "1x1"], "refuse"),
        Case("bench--seeds-0", F, [*BENCH, "--seeds", "0"], "refuse"),
        Case("bench--jobs-0", F, [*BENCH, "--jobs", "0"], "refuse"),
        Case("bench--val-fraction-1.5", F, [*BENCH, "--val-fraction", "1.5"], "refuse"),
        Case("bench--val-fraction-nan", F, [*BENCH, "--val-fraction", "nan"], "refuse"),
        Case("bench--methods-empty", F, [*BENCH, "--methods", ""], "refuse"),
        Case("bench--archs-bogus", F, [*BENCH, "--archs", "bogus"], "refuse"),
        Case("bench--cpus-per-job-0", F, [*BENCH, "--executor", "ray", "--cpus-per-job", "0"], "refuse"),
        Case("bench--slurm-time-neg", F, [*BENCH, "--executor", "slurm", "--slurm-time-min", "-5"], "refuse"),
        Case(
            "bench--grid-not-yaml", F, [*BENCH, "--grid", "g.yaml"], "refuse", lambda t: write(t / "g.yaml", "{: :\n")
        ),
        Case(
            "bench--grid-unknown-key",
            F,
            [*BENCH, "--grid", "g.yaml"],
            "refuse",
            lambda t: write(t / "g.yaml", "methodz: [ew]\n"),
        ),
        Case("bench--out-is-file", F, [*BENCH[:-1], "f"], "refuse", lambda t: write(t / "f", "x\n")),
        Case("export--checkpoint-missing", F, ["export", "--checkpoint", "NOPE", "--out", "m.safetensors"], "refuse"),
    ]
    return c


def env() -> list[Case]:
    listing = ["list"]
    pe = "DENSEMTL_PROGRESS_EVERY"
    short_train = [*SYNTH_TRAIN[:-1], *SEGNET_TINY, "--out", "R"]  # progress on: the variable is read
    return [
        Case("progress-every-neg", E, listing, "refuse", env={pe: "-1"}),
        Case("progress-every-abc", E, listing, "refuse", env={pe: "abc"}),
        Case("progress-every-nan", E, listing, "refuse", env={pe: "nan"}),
        Case("progress-every-0", E, short_train, "accept", env={pe: "0"}, note="arguable: 0 = off"),
        Case("progress-every-huge", E, short_train, "accept", env={pe: "1e9"}),
        Case("progress-every-empty", E, listing, "accept", env={pe: ""}, note="empty = unset"),
        Case("progress-every-fullwidth", E, listing, "accept", env={pe: "５"}, note="arguable: int('５') is 5"),
        Case("imports-empty", E, listing, "accept", env={"DENSEMTL_IMPORTS": ""}),
        Case("imports-commas", E, listing, "accept", env={"DENSEMTL_IMPORTS": ",,,"}),
        Case(
            "imports-raises",
            E,
            listing,
            "refuse",
            lambda t: write(t / "bomb.py", "raise RuntimeError('boom')\n"),
            env={"DENSEMTL_IMPORTS": "bomb"},
        ),
        Case("imports-stdlib", E, listing, "accept", env={"DENSEMTL_IMPORTS": "os"}),
        Case(
            "dist-timeout-neg-speed-ws2",
            E,
            [*SPEED, "--world-size", "2"],
            "refuse",
            env={"DENSEMTL_DIST_TIMEOUT_MIN": "-5"},
        ),
        Case(
            "dist-timeout-nan-speed-ws2",
            E,
            [*SPEED, "--world-size", "2"],
            "refuse",
            env={"DENSEMTL_DIST_TIMEOUT_MIN": "nan"},
        ),
        Case(
            "cache-is-file-bench",
            E,
            [*BENCH, "--methods", "ew", "--seeds", "1"],
            "refuse",
            lambda t: write(t / "cachefile", "x\n"),
            env={"DENSEMTL_CACHE": "cachefile/sub"},
            note="bench's cache under a file",
            keeps=("B",),
        ),
    ]


def cases() -> list[Case]:
    return [*flags(), *env()]

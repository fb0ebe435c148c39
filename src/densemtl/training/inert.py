"""Settings that do nothing in the combination given (``--momentum`` with Adam, ``--lr-step`` with a
cosine schedule, MDML's knobs without a peer, ...) and the loader workers a machine can hold.

What is refused and what is only warned of (docs/errors.md, "Flags that do nothing, workers and
torchrun"):

- a **flag** on the command line that does nothing, or a warm-up that would never end within the
  run, is refused (exit 2): the user typed it, so they expect it to act;
- a **config file's** key that does nothing is one warning line when its value is not the default
  (a shared YAML preset may set ``lr_step`` while a flag switches the schedule, and a run's own
  config.yaml holds every key, the defaults of the unused ones included);
- what is only arguably pointless is a warning even as a flag: ``--sync-bn`` in one process (the
  same command runs under torchrun) and an ``--lr-step`` at or past ``--epochs`` (the decay stays
  planned for a ``--resume`` that extends the run);
- the demo preset's keys (``lr_step: 10``) and a resumed run's own config are never questioned.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from densemtl.errors import ConfigError
from densemtl.training.config import DEMO, TrainConfig
from densemtl.training.config_spec import flag_of as spec_flag_of
from densemtl.training.config_spec import scheme_knobs
from densemtl.training.schedule import default_lr_step


def flag_of(key: str, value: Any = None) -> str:
    """The command-line flag that sets config ``key`` (the spec's; ``--no-sync-bn`` for a false ``sync_bn``)."""
    if key == "sync_bn" and value is False:
        return "--no-sync-bn"
    return spec_flag_of(TrainConfig, key)


@dataclasses.dataclass(frozen=True)
class Inert:
    """Config ``key`` does nothing under the config: ``why`` (after the flag and its value), and
    whether a flag setting it is refused (``refuse``) or only warned of."""

    key: str
    why: str
    refuse: bool = True


def _peer_knobs(cfg: TrainConfig) -> list[Inert]:
    if cfg.peer_arch is None:
        why = "does nothing without --peer-arch: it is an MDML knob (add --peer-arch ARCH or leave it out)"
        knobs = scheme_knobs(type(cfg)).get("mutual", [])  # the spec's knobs of the scheme, but the peer itself
        return [Inert(k, why) for k in knobs if k != "peer_arch"]
    if 0 < cfg.alpha_warmup_epochs >= cfg.epochs:
        why = (
            f"is not below --epochs {cfg.epochs}: the mimicry weight would never reach --mimicry-weight "
            "within the run (use fewer epochs of ramp than --epochs)"
        )
        return [Inert("alpha_warmup_epochs", why)]
    return []


def _schedule(cfg: TrainConfig) -> list[Inert]:
    out = []
    if cfg.optimizer != "sgd":
        why = f"does nothing with --optimizer {cfg.optimizer}: it is sgd's (add --optimizer sgd or leave it out)"
        out.append(Inert("momentum", why))
    if cfg.lr_schedule != "step":
        why = (
            f"does nothing with --lr-schedule {cfg.lr_schedule}: it is the step schedule's "
            "(add --lr-schedule step or leave it out)"
        )
        out += [Inert("lr_step", why), Inert("lr_gamma", why)]
    elif cfg.lr_step is not None and 0 < cfg.epochs <= cfg.lr_step:
        later = f"(it would after epoch {cfg.lr_step} of a --resume that extends the run)"
        why = f"is not below --epochs {cfg.epochs}: the learning rate does not decay within this run {later}"
        gamma = f"does nothing within this run: a decay every {cfg.lr_step} epochs comes after --epochs {cfg.epochs} "
        out += [Inert("lr_step", why, refuse=False), Inert("lr_gamma", gamma + later, refuse=False)]
    if 0 < cfg.warmup_epochs >= cfg.epochs:
        why = (
            f"is not below --epochs {cfg.epochs}: the warm-up would not end within the run, which would never "
            "train at --lr (use fewer warm-up epochs than --epochs)"
        )
        out.append(Inert("warmup_epochs", why))
    return out


def _processes(cfg: TrainConfig) -> list[Inert]:
    from densemtl.launch import launched

    if cfg.sync_bn is not None and not launched():
        return [Inert("sync_bn", "does nothing in one process: it is for a run under torchrun", refuse=False)]
    return []


RULES: list[Callable[[TrainConfig], list[Inert]]] = [_peer_knobs, _schedule, _processes]


def inert_settings(cfg: TrainConfig) -> list[Inert]:
    """Every setting of ``cfg`` that does nothing in its combination (see the module's docstring)."""
    return [i for rule in RULES for i in rule(cfg)]


def _is_default(key: str, value: Any, cfg: TrainConfig) -> bool:
    if key == "lr_step":
        return value in ("auto", default_lr_step(cfg.epochs), DEMO["lr_step"])
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == key)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return bool(value == default)


def check_settings(
    cfg: TrainConfig,
    flags: Mapping[str, Any],
    config_file: Mapping[str, Any] | None = None,
    file_name: str = "the config file",
    warn: Callable[[str], None] | None = None,
) -> TrainConfig:
    """``cfg`` checked for settings that do nothing: one of ``flags`` (the keys given on the command
    line) is refused or warned of, a non-default one of ``config_file`` warned of (``warn`` takes
    each line; None: none printed); ``cfg`` with ``workers`` capped at :func:`max_workers` (warned of)."""
    say = warn or (lambda _line: None)
    for inert in inert_settings(cfg):
        if inert.key in flags:
            value = flags[inert.key]
            shown = flag_of(inert.key, value) + ("" if isinstance(value, bool | dict) else f" {value}")
            if inert.refuse:
                raise ConfigError(f"{shown} {inert.why}")
            say(f"densemtl: warning: {shown} {inert.why}")
        elif config_file and inert.key in config_file and not _is_default(inert.key, config_file[inert.key], cfg):
            say(f"densemtl: warning: {inert.key}: {config_file[inert.key]} in {file_name} {inert.why}")
    most = max_workers()
    if cfg.workers > most:
        say(
            f"densemtl: warning: --workers {cfg.workers} is more loader processes than the {most} CPUs this "
            f"process may use: {most} are started"
        )
        cfg = dataclasses.replace(cfg, workers=most)
    return cfg


def check_batch_size(batch_size: int, n_train: int, flags: Mapping[str, Any]) -> None:
    """A ConfigError when ``--batch-size`` (in ``flags``, the command line's) exceeds the ``n_train``
    training images: every epoch would be one batch of them all, the same run as ``--batch-size
    n_train`` (the last-batch rule drops nothing then), so the value typed does nothing. A config
    file's or preset's batch size is left as it is: a shared YAML may meet a small ``--n-train``."""
    if "batch_size" in flags and batch_size > n_train:
        raise ConfigError(
            f"--batch-size {batch_size} is more than the {n_train} training images: every epoch would be one "
            f"batch of {n_train} (give --batch-size {n_train} or less)"
        )


def max_workers() -> int:
    """The most data loader processes a run starts: the CPUs this process may run on (its affinity
    where the system says, else the machine's count), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on macOS and Windows
        return max(1, os.cpu_count() or 1)

"""The range checks of :class:`~densemtl.training.config.TrainConfig`: values that parse but make no sense."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from densemtl.data.base import MAX_SEED as MAX_SEED  # re-exported: the data writers check seeds too
from densemtl.errors import ConfigError
from densemtl.training.schedule import LR_SCHEDULES, OPTIMIZERS

if TYPE_CHECKING:
    from densemtl.training.config import TrainConfig

#: The most classes a run may have: per-pixel logits of more would outgrow any memory (LVIS has 1203).
MAX_CLASSES = 65536


#: The values of ``--amp``.
AMP_MODES = ("off", "bf16", "fp16")


def canonical_names(cfg: TrainConfig) -> None:
    """``cfg.method`` as registered when it is another spelling of a registered name (LibMTL's
    ``Nash_MTL`` is ``nashmtl``), so that config.yaml holds the canonical name; an unknown name is
    left for the registry to refuse when the run is built (a plugin may register it)."""
    from densemtl.balancing import METHODS

    cfg.method = METHODS.find(cfg.method) or cfg.method


def check_ranges(cfg: TrainConfig) -> None:
    """Values that parse but make no sense (negative epochs, zero batch, ...)."""
    if cfg.epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if not 0 < cfg.lr < math.inf:
        raise ConfigError(f"lr must be a finite number > 0, got {cfg.lr}")
    if not 0 <= cfg.weight_decay < math.inf:
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {cfg.weight_decay}")
    if not 0 < cfg.lr_gamma < math.inf:
        raise ConfigError(f"lr_gamma must be a finite number > 0 (the factor on the learning rate), got {cfg.lr_gamma}")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed must be in 0..{MAX_SEED} (2**32 - 1), got {cfg.seed}")
    if cfg.num_classes is not None and cfg.num_classes > MAX_CLASSES:  # below 1: the dataset says what it has
        raise ConfigError(f"num_classes must be at most {MAX_CLASSES}, got {cfg.num_classes}")
    for name in ("n_train", "n_val"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    if cfg.lr_step is not None and cfg.lr_step < 1:
        raise ConfigError(f"lr_step must be >= 1, got {cfg.lr_step}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"momentum must be >= 0 and < 1, got {cfg.momentum}")
    for name in ("warmup_epochs", "schedule_epochs"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.recompute_every < 1:
        raise ConfigError(f"recompute_every must be >= 1, got {cfg.recompute_every}")
    if not 0 <= cfg.mimicry_weight < math.inf or not 0 < cfg.mimicry_temperature < math.inf:
        raise ConfigError(
            f"mimicry_weight must be >= 0 and mimicry_temperature > 0, got {cfg.mimicry_weight}, "
            f"{cfg.mimicry_temperature}"
        )
    if cfg.alpha_warmup_epochs < 0:
        raise ConfigError(f"alpha_warmup_epochs must be >= 0, got {cfg.alpha_warmup_epochs}")
    if cfg.workers < 0:
        raise ConfigError(f"workers must be >= 0, got {cfg.workers}")
    if cfg.diagnostics_every < 0:
        raise ConfigError(f"diagnostics_every must be >= 0 (0 = off), got {cfg.diagnostics_every}")
    if cfg.amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {cfg.amp!r}")
    for name in ("checkpoint_every", "skip_nonfinite"):  # steps; 0 = off
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0 (0 = off), got {getattr(cfg, name)}")

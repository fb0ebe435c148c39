"""Mixed precision (``--amp bf16|fp16``): the forward pass in half precision, every method in float32.

- The model's forward runs under :func:`torch.autocast` (bf16 or fp16); the predictions are cast
  to float32 before the losses, so losses, Jacobians, Gramians and every aggregation are float32.
- fp16 also scales the losses by a :class:`torch.amp.GradScaler`'s scale S before each backward pass,
  so that small gradients survive fp16's range. A method never sees S: the engine divides it out
  of every per-task gradient (J, the representation's rows, the Gramian by S²) before the method
  combines them, and multiplies the combined update by S again when it writes ``.grad``, which the
  scaler then unscales, checks and applies (``scaler.step``; ``scaler.update`` adapts S).
- A step whose scaled gradients overflow is skipped: the engine finds the overflow in the per-task
  gradients before the method sees them (so no method state takes an inf), leaves an inf in
  ``.grad`` for the scaler to find, and the scaler skips the optimizer step and lowers S. The
  trainer counts such steps (``amp_skipped_steps`` in metrics.jsonl). In the rare step whose
  per-task gradients are finite but whose combined update overflows once multiplied back by S,
  the method has already consumed those (valid) gradients when the scaler skips the step.

bf16 has float32's range: no scaler, nothing to skip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from densemtl.errors import ConfigError

#: The dtype of each ``--amp`` mode.
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """The run's ``--amp`` mode on ``device``: its autocast and, for fp16, its gradient scaler."""

    def __init__(self, mode: str = "off", device: torch.device | None = None) -> None:
        if mode not in ("off", *DTYPES):
            raise ConfigError(f"--amp must be off, bf16 or fp16, got {mode!r}")
        self.mode = mode
        self.device = device or torch.device("cpu")
        if mode == "fp16" and self.device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA device (--device cuda); on the CPU use --amp bf16")
        #: the fp16 gradient scaler (None: bf16 or off)
        self.scaler: torch.amp.GradScaler | None = torch.amp.GradScaler(self.device.type) if mode == "fp16" else None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def scale(self) -> float:
        """The factor S the losses are multiplied by before a backward pass (1 without a scaler)."""
        if self.scaler is None:
            return 1.0
        # scale() of a 1 (rather than get_scale()) also starts the scaler on its first call
        return float(self.scaler.scale(torch.ones((), device=self.device)))

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward pass's precision (nothing when off)."""
        if not self.enabled:
            yield
            return
        with torch.autocast(self.device.type, dtype=DTYPES[self.mode]):
            yield

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply ``optimizer`` to ``.grad`` (through the scaler, which unscales it and skips the
        step when it holds an inf or a NaN)."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)

    def update(self) -> bool:
        """After every optimizer's :meth:`step`: adapt S. True when the scaler skipped the step
        (it lowers S exactly then)."""
        if self.scaler is None:
            return False
        before = self.scaler.get_scale()
        self.scaler.update()
        return self.scaler.get_scale() < before

    def state_dict(self) -> dict[str, object]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def mark_overflow(params: list[nn.Parameter]) -> None:
    """Leave an inf in ``.grad`` (and nothing else) so that the scaler skips this step."""
    for p in params:
        p.grad = None
    if params:
        first = params[0]
        first.grad = torch.full_like(first, float("inf"))


def finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())

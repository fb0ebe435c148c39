"""Diagnostics recorded during training: gradient conflict and per-layer balance of the tasks.

Every ``every`` training steps of the main network (``--diagnostics-every``, 0 = off), on that
step's batch and under the weights that step used (before ``optimizer.step()``), a separate
forward pass is taken and the T raw task losses are differentiated with respect to the shared
parameters (T ``autograd.grad`` calls). Nothing is written into ``.grad``, the model's buffers
(BatchNorm running statistics) are restored afterwards and the random generators are forked
around the forward, so a run's weights are bit-identical with diagnostics on or off.

From the T per-task gradients g_t (restricted to the shared parameters) two things are measured:

- ``grad_cosine``: cos(g_s, g_t) for each task pair ``"s|t"`` (s before t in task order);
- ``layer_balance``: for each block b of the shared network, each task's share of the gradient
  norm, ‖g_t,b‖ / Σ_s ‖g_s,b‖ (a block where every task's gradient is zero is left out).

Blocks group shared parameters by module name (see :func:`block_of`): the module path cut after
its first numeric component if one occurs within its first four components (``trunk.encoder.0``,
``backbone.layer4.2``, ``decoder_units.1``), else its first two components (``backbone.conv1``).
Both are averaged over the sampled steps of an epoch and recorded in ``metrics.jsonl``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from densemtl.errors import ConfigError


def block_of(name: str) -> str:
    """The block a shared parameter belongs to, from its qualified name (see the module doc)."""
    parts = name.split(".")[:-1]
    if not parts:
        return name
    for i, part in enumerate(parts[:4]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:2])


def pair_key(a: str, b: str) -> str:
    return f"{a}|{b}"


@dataclass
class GradStats:
    """One sample: the cosine matrix (T, T) and the per-block gradient norms (block -> (T,))."""

    cosine: Tensor
    block_norms: dict[str, Tensor]

    def shares(self) -> dict[str, Tensor]:
        """Each task's share of the gradient norm per block; blocks with no gradient are left out."""
        out: dict[str, Tensor] = {}
        for block, norms in self.block_norms.items():
            total = norms.sum()
            if total > 0:
                out[block] = norms / total
        return out


def task_gradient_stats(losses: Tensor | Sequence[Tensor], named_params: list[tuple[str, nn.Parameter]]) -> GradStats:
    """Cosines and block norms of the gradients of ``losses`` (T scalars) w.r.t. ``named_params``.

    Pass the T losses as a list where possible: a task's gradient of a stacked vector's entry
    also runs zero cotangents back through every other task's head.

    Per-task gradients are never concatenated: for each parameter the T gradients give a T×T
    Gramian, summed per block and overall, from which norms and cosines follow.
    """
    parts = list(losses.unbind()) if isinstance(losses, Tensor) else list(losses)
    T = len(parts)
    device = parts[0].device
    params = [p for _, p in named_params]
    grads = [torch.autograd.grad(parts[t], params, retain_graph=t < T - 1, allow_unused=True) for t in range(T)]
    gram_blocks: dict[str, Tensor] = {}
    for j, (name, p) in enumerate(named_params):
        rows = [g[j] if g[j] is not None else torch.zeros_like(p) for g in grads]
        M = torch.stack([r.detach().reshape(-1).double() for r in rows])
        G = M @ M.T
        block = block_of(name)
        gram_blocks[block] = gram_blocks[block] + G if block in gram_blocks else G
    total = sum(gram_blocks.values(), torch.zeros(T, T, dtype=torch.float64, device=device))
    norms = total.diagonal().clamp_min(0).sqrt()
    denom = torch.outer(norms, norms)
    cosine = torch.where(denom > 0, total / denom.clamp_min(1e-300), torch.zeros_like(total))
    block_norms = {b: G.diagonal().clamp_min(0).sqrt().cpu() for b, G in gram_blocks.items()}
    return GradStats(cosine.cpu(), block_norms)


class Diagnostics:
    """Samples :func:`task_gradient_stats` every ``every`` steps and averages it per epoch.

    ``loss_fn(model, batch)`` gives the T task losses of a fresh forward (the engine's
    ``task_loss_parts`` of the model's predictions, in the trainer). Inactive when ``every`` is 0 or
    the model has no shared parameters; then :meth:`summary` is empty.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: tuple[str, ...],
        loss_fn: Callable[[nn.Module, dict[str, Tensor]], Tensor | Sequence[Tensor]],
        named_shared: Iterable[tuple[str, nn.Parameter]],
        *,
        every: int,
    ) -> None:
        if every < 0:
            raise ConfigError(f"diagnostics_every must be >= 0, got {every}")
        self.model = model
        self.tasks = tasks
        self.loss_fn = loss_fn
        self.named_shared = list(named_shared)
        self.every = every
        self.active = every > 0 and bool(self.named_shared) and len(tasks) > 1
        self.reset()

    def reset(self) -> None:
        """Forget the epoch's samples (called at the start of each epoch)."""
        self.n = 0
        self._cos_sum: Tensor | None = None
        self._share_sum: dict[str, Tensor] = {}
        self._share_n: dict[str, int] = {}

    def state_dict(self) -> dict[str, Any]:
        """The epoch's samples so far (a mid-epoch checkpoint resumes the epoch's averages)."""
        return {
            "n": self.n,
            "cos_sum": self._cos_sum,
            "share_sum": dict(self._share_sum),
            "share_n": dict(self._share_n),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n = int(state["n"])
        self._cos_sum = state["cos_sum"]
        self._share_sum = dict(state["share_sum"])
        self._share_n = {k: int(v) for k, v in state["share_n"].items()}

    def due(self, step: int) -> bool:
        return self.active and step % self.every == 0

    def observe(self, batch: dict[str, Tensor], step: int) -> None:
        """If ``step`` (0-based, of the main network) is sampled, measure on ``batch``."""
        if not self.due(step):
            return
        stats = self.measure(batch)
        self._cos_sum = stats.cosine if self._cos_sum is None else self._cos_sum + stats.cosine
        for block, share in stats.shares().items():
            self._share_sum[block] = self._share_sum.get(block, 0) + share
            self._share_n[block] = self._share_n.get(block, 0) + 1
        self.n += 1

    def measure(self, batch: dict[str, Tensor]) -> GradStats:
        """One sample under the current weights, leaving the model, its buffers and the RNG as they were."""
        buffers = [b.detach().clone() for b in self.model.buffers()]
        device = batch["image"].device
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
                losses = self.loss_fn(self.model, batch)
                return task_gradient_stats(losses, self.named_shared)
        finally:
            with torch.no_grad():
                for b, saved in zip(self.model.buffers(), buffers, strict=True):
                    b.copy_(saved)

    def summary(self) -> dict[str, Any]:
        """The epoch's record fields: ``grad_cosine``, ``layer_balance``, ``diagnostic_steps``.

        Empty when inactive; ``None`` values when no step of the epoch was sampled.
        """
        if not self.active:
            return {}
        if self._cos_sum is None:
            return {"grad_cosine": None, "layer_balance": None, "diagnostic_steps": 0}
        cos = self._cos_sum / self.n
        pairs = {
            pair_key(self.tasks[i], self.tasks[j]): float(cos[i, j])
            for i, j in itertools.combinations(range(len(self.tasks)), 2)
        }
        balance = {
            block: dict(zip(self.tasks, (s / self._share_n[block]).tolist(), strict=True))
            for block, s in self._share_sum.items()
        }
        return {"grad_cosine": pairs, "layer_balance": balance, "diagnostic_steps": self.n}


# -- TensorBoard --------------------------------------------------------------------------------------
def require_tensorboard() -> None:
    """Raise a one-line ConfigError if the optional ``tensorboard`` package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: install tensorboard (pip install 'densemtl[tb]')"
        ) from None


def flatten_scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a metrics record as ``{"val/seg/miou": 0.4, ...}`` (``epoch`` left out)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if key == "epoch" and not prefix:
            continue
        if isinstance(value, dict):
            out.update(flatten_scalars(value, tag + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            out[tag] = float(value)
    return out


def hparam_values(config: dict[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """A config as TensorBoard hyper-parameters: nested mappings flattened to ``a/b`` keys, lists
    and None written as text (TensorBoard takes numbers, text and booleans only)."""
    out: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(hparam_values(value, tag + "/"))
        elif isinstance(value, bool | int | float | str):
            out[tag] = value
        else:
            out[tag] = str(value)
    return out


class TensorBoardLog:
    """The run's TensorBoard log in ``out``:

    - each epoch's record (losses, weights, validation metrics, cosines, balance) at its epoch;
    - each training step's task losses and weights (``step/loss/<task>``, ``step/weight/<task>``;
      a peer's under ``step/<peer>/…``) at the main network's step count, from :meth:`log_step`;
    - with :meth:`attach`, the prediction grid (``plots/predictions.png``'s figure) as the image
      ``predictions`` each epoch, and at :meth:`close` the run's config as hyper-parameters with its
      final validation metrics (``final/<task>/<metric>``, TensorBoard's HPARAMS tab).
    """

    def __init__(self, out: Path) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out))
        self.hparams: dict[str, Any] | None = None
        self.images: Callable[[], Any] | None = None
        self.last: dict[str, Any] | None = None

    def attach(self, hparams: dict[str, Any], images: Callable[[], Any] | None = None) -> None:
        """The run's config (written with the final metrics at :meth:`close`) and a function
        drawing the prediction grid as an (H, W, 3) uint8 array (logged with every epoch)."""
        self.hparams = hparams
        self.images = images

    def log_step(self, step: int, results: Sequence[Any], tasks: Sequence[str], names: Sequence[str] = ("",)) -> None:
        """One training step: each member's task losses and weights (``results``: one
        :class:`~densemtl.engine.StepResult` per member, named by ``names``, "" the main network)."""
        for name, result in zip(names, results, strict=True):
            where = f"step/{name}/" if name else "step/"
            for t, loss, weight in zip(tasks, result.losses.tolist(), result.weights.tolist(), strict=True):
                self.writer.add_scalar(f"{where}loss/{t}", loss, step)
                self.writer.add_scalar(f"{where}weight/{t}", weight, step)

    def log(self, record: dict[str, Any]) -> None:
        """One epoch's record (and the prediction grid, when attached)."""
        step = int(record["epoch"])
        for tag, value in flatten_scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        if self.images is not None:
            self.writer.add_image("predictions", self.images(), step, dataformats="HWC")
        self.last = record
        self.writer.flush()

    def close(self) -> None:
        """Write the hyper-parameters with the last record's validation metrics, then close."""
        if self.hparams is not None and self.last is not None:
            final = {f"final/{k}": v for k, v in flatten_scalars(self.last.get("val") or {}).items()}
            if final:
                self.writer.add_hparams(hparam_values(self.hparams), final, run_name="hparams")
        self.writer.close()

"""The three kinds of balancing method, told apart by their type.

- ``LossWeighting``: sees the T task losses (and their history) and gives T weights; the
  update is the gradient of sum_t w_t L_t. EW, UW, DWA, ...
- ``Aggregator``: sees the Jacobian J (T x P) of the task losses with respect to the shared
  parameters and gives one vector ``aggregate(J) -> Tensor[P]``. A ``GramianWeighting`` is an
  aggregator whose output is ``w(G) @ J`` with weights computed from the Gramian G = J J^T alone,
  which lets the engine avoid J, reduce a T x T matrix across processes, or reuse weights.
- ``OptimizerMethod``: consumes the per-task gradients itself (MAO). It is an ``Aggregator`` whose
  ``aggregate(J)`` returns the step of the shared parameters, applied by plain SGD at the
  learning rate (``shared_optimizer = "sgd"``); the other parameters are trained by AdamW.

Everything that carries state exposes ``state_dict``/``load_state_dict``; random methods draw
from the ``torch.Generator`` given to ``set_generator``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn


class BalancingMethod:
    """Common base: a name, a kind, state and a random generator."""

    kind: ClassVar[str] = "abstract"
    #: whether the method's weights may be computed at the shared representation
    supports_representation: ClassVar[bool] = False
    #: whether ``--grad-mode representation`` may be forced at all: False for methods whose state
    #: follows each coordinate of J across steps, which the representation of another batch lacks
    allows_representation: ClassVar[bool] = True
    #: how the trainer steps the shared parameters with the update left in ``.grad``: "adam" (the
    #: default optimizer for every parameter) or "sgd" (plain SGD at the learning rate, for
    #: methods whose update already is the step, like MAO's; see ``build_optimizer``)
    shared_optimizer: ClassVar[str] = "adam"

    def __init__(self) -> None:
        self.generator: torch.Generator | None = None

    def set_generator(self, generator: torch.Generator) -> None:
        self.generator = generator

    def rng(self) -> torch.Generator:
        """``self.generator``, created on first use as a CPU ``torch.Generator`` seeded with 0."""
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(0)
        return self.generator

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the method itself (e.g. UW's log-variances)."""
        return []

    def end_epoch(self, epoch: int, mean_losses: Tensor) -> None:
        """Called after each training epoch with the epoch's mean task losses."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LossWeighting(BalancingMethod):
    """Turns task losses into one scalar ``sum_t w_t L_t``; subclasses give ``weights``."""

    kind: ClassVar[str] = "loss"
    #: whether the engine should call ``observe_grad_norms`` before each ``combine`` (GradNorm)
    needs_layer_grad_norms: ClassVar[bool] = False
    #: set by a subclass whose own ``combine`` still returns exactly sum_t w_t L_t with the w it
    #: returns (as this base class's does), so that the engine may build the update from per-task
    #: pieces
    weighted_sum_combine: ClassVar[bool] = False

    def observe_grad_norms(self, norms: Tensor) -> None:
        """Receive ‖∇_W L_t‖ (T,) for one shared layer W, chosen by the engine, before ``combine``."""
        return None

    def weights(self, losses: Tensor) -> Tensor:
        """Weights (T,) for the detached task losses (T,)."""
        raise NotImplementedError

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """The scalar to back-propagate and the weights used (detached)."""
        w = self.weights(losses.detach()).to(losses)
        return (w * losses).sum(), w.detach()


class Aggregator(BalancingMethod):
    """Maps the Jacobian J (T x P) of the shared parameters to one update direction (P,)."""

    kind: ClassVar[str] = "gradient"
    #: "jacobian" when whole rows are needed, "gramian" when J J^T suffices
    needs: ClassVar[str] = "jacobian"
    #: whether the output is sum_t c_t g_t with c computed from the Gramian alone
    is_linear_in_rows: ClassVar[bool] = False

    #: whether the engine should hand J over one row at a time (``start_rows``, ``add_row`` per
    #: task, ``finish_rows``) and keep one row instead of T: for a method that overrides the
    #: three to fold each row in as it comes (MAO)
    streams_rows: ClassVar[bool] = False
    _rows: Tensor | None = None

    def start_rows(self, num_tasks: int, like: Tensor, out: Tensor | None = None) -> None:
        """Begin a step of ``num_tasks`` rows shaped, typed and placed like ``like``; a method may
        build its update in ``out`` (the engine's update buffer) and return it. By default the
        rows are gathered into a J for ``aggregate``."""
        self._rows = like.new_empty(num_tasks, like.numel())

    def add_row(self, t: int, g: Tensor) -> None:
        """Take row t of J (the engine reuses ``g``'s storage for the next row)."""
        assert self._rows is not None, "start_rows first"
        self._rows[t].copy_(g.reshape(-1))

    def finish_rows(self) -> Tensor:
        """The update, as ``aggregate`` of the rows given returns it."""
        J, self._rows = self._rows, None
        assert J is not None, "start_rows first"
        return self(J)

    def loss_transform(self, losses: Tensor) -> Tensor:
        """The losses whose Jacobian is aggregated (identity; DB-MTL uses their logarithm)."""
        return losses

    def aggregate(self, J: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, J: Tensor) -> Tensor:
        if J.dim() != 2:
            name = type(self).__name__
            raise ValueError(f"{name} expects a matrix J of shape (T, P), got {tuple(J.shape)}")
        return self.aggregate(J)


class GramianWeighting(Aggregator):
    """An aggregator of the form ``w(G) @ J``: subclasses implement ``weights_from_gramian``."""

    needs: ClassVar[str] = "gramian"
    is_linear_in_rows: ClassVar[bool] = True

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        raise NotImplementedError

    def aggregate(self, J: Tensor) -> Tensor:
        w = self.weights_from_gramian(J @ J.T)
        return w.to(J) @ J


class OptimizerMethod(Aggregator):
    """Consumes the per-task gradients itself to update the shared parameters.

    ``aggregate(J)`` returns the step direction d of the shared parameters (keeping whatever
    moments it needs between calls); the trainer applies θ ← θ − lr·d with plain SGD. The
    task-specific parameters get their own task's gradient and are trained by AdamW with
    ``optimizer_options()``, whose ``weight_decay`` the SGD of the shared parameters uses too.
    """

    kind: ClassVar[str] = "optimizer"
    shared_optimizer: ClassVar[str] = "sgd"
    allows_representation: ClassVar[bool] = False

    def optimizer_options(self) -> dict[str, Any]:
        """Keyword arguments (betas, eps, weight_decay) of the AdamW for the non-shared parameters."""
        return {}

"""One training step's backward pass: losses -> balancing method -> ``.grad`` of every parameter.

The engine reads the method's :class:`~densemtl.balancing.base.Requirements` and nothing else
about it: the mode (:mod:`densemtl.engine.modes`) picks one strategy
(:mod:`densemtl.engine.strategies`) that turns each forward pass's losses into ``.grad``. With
``recompute_every=k`` a method whose update is Σ_t c_t g_t with c from the Gramian computes J
and c every k steps and in between takes one backward of Σ_t c_t L_t. A model without shared
parameters (``single``) has nothing to balance: every task then gets its own gradient of the
(transformed) loss, with weight 1. After the optimizer step, :meth:`Engine.after_step`
re-evaluates the batch for a method that declares ``reevaluate`` (FAMO).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from densemtl.balancing.base import BalancingMethod
from densemtl.distributed import Comm
from densemtl.engine.modes import MODES, check_mode, check_recompute_every, default_mode
from densemtl.engine.precision import Precision
from densemtl.engine.protocols import EngineModel
from densemtl.engine.strategies import STRATEGIES, Context, Forward, NonFiniteGradientError, StepResult
from densemtl.errors import ConfigError
from densemtl.plugin_contracts import check_outputs

if TYPE_CHECKING:
    from densemtl.tasks import TaskSet

__all__ = [
    "MODES",
    "Engine",
    "Forward",
    "NonFiniteGradientError",
    "StepResult",
    "check_mode",
    "default_mode",
]


class Engine:
    """Computes the update of one batch for ``model`` under ``method`` and writes it into ``.grad``.

    ``model`` is a :class:`~densemtl.models.base.MultiTaskModel` (any ``nn.Module`` meeting
    :class:`~densemtl.engine.protocols.EngineModel`) with every task of ``tasks`` (the run's
    :class:`~densemtl.tasks.TaskSet`, whose knobs set the losses; names: their defaults); for one's
    own ``nn.Module`` and losses, :func:`densemtl.backward` drives the same strategies.
    """

    def __init__(
        self,
        model: EngineModel,
        method: BalancingMethod,
        tasks: TaskSet | Sequence[str],
        *,
        mode: str | None = None,
        recompute_every: int = 1,
        comm: Comm | None = None,
        precision: Precision | None = None,
    ) -> None:
        check_model(model, tasks)
        self.model = model
        #: the processes of the run (:mod:`densemtl.distributed`); one by default
        self.comm = comm if comm is not None else Comm()
        #: the forward pass's precision and fp16's gradient scaler (:mod:`densemtl.engine.precision`)
        self.precision = precision if precision is not None else Precision()
        self.method = method
        from densemtl.tasks import TaskSet

        #: the run's configured tasks, whose losses are balanced (None when given names: the model's
        #: ``task_losses`` then uses their defaults, or its own losses); ``tasks``: their names
        self.task_set = tasks if isinstance(tasks, TaskSet) else None
        self.tasks: tuple[str, ...] = tuple(tasks)
        check_declaration(method)
        self.mode = check_mode(method, mode, has_representation=model.has_representation, owner=type(model).__name__)
        check_recompute_every(method, recompute_every)
        self.recompute_every = recompute_every
        self.step_count = 0
        own = [model.task_parameters(t) for t in self.tasks]
        shared = model.shared_parameters()
        check_split(model, shared)
        ctx = Context(model, method, self.tasks, shared, own, self.comm, self.precision)
        #: how this engine's gradient source becomes ``.grad`` (one per mode)
        self.strategy = STRATEGIES[self.mode](ctx, recompute_every)

    @property
    def coefficients(self) -> Tensor | None:
        """The task coefficients c of the last computed step, when the update is c(G) @ J."""
        return self.strategy.coefficients

    @coefficients.setter
    def coefficients(self, value: Tensor | None) -> None:
        self.strategy.coefficients = value

    @property
    def norm_layer_name(self) -> str | None:
        """The shared layer whose gradient norms the method receives (None until it is found)."""
        return self.strategy.norm_layer_name

    # -- pieces -----------------------------------------------------------------------------------
    def task_loss_parts(self, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> list[Tensor]:
        """Each task's scalar loss (the model's extra losses included), in task order; a user's
        model whose predictions are not what the tasks need: one line naming it."""
        check_outputs(self.model, preds, batch, self.tasks)
        losses = self.model.task_losses(preds, batch, self.tasks if self.task_set is None else self.task_set)
        return [losses[t] for t in self.tasks]

    def task_losses(self, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        return torch.stack(self.task_loss_parts(preds, batch))

    # -- steps ------------------------------------------------------------------------------------
    def step(self, batch: dict[str, Tensor]) -> StepResult:
        """Forward, losses, backward; leaves the update in ``.grad`` (zeroed first)."""
        return self.backward(self.forward(batch))

    def forward(self, batch: dict[str, Tensor]) -> Forward:
        """The forward pass and the task losses, shaped for this engine's mode (grads zeroed)."""
        self.model.zero_grad(set_to_none=True)
        check_batch(batch, self.tasks)
        x = batch["image"]
        amp = self.precision
        if self.strategy.splits_forward(self.step_count):
            with amp.autocast():
                rep = self.model.encode(x)
                rep_in = rep.detach().requires_grad_(True)
                preds = self.model.decode(rep_in, (x.shape[-2], x.shape[-1]))
            preds = _float(preds) if amp.enabled else preds
            return Forward(preds, self.comm.globalize(self.task_loss_parts(preds, batch)), rep, rep_in)
        with amp.autocast():
            preds = self.model(x)
        preds = _float(preds) if amp.enabled else preds
        return Forward(preds, self.comm.globalize(self.task_loss_parts(preds, batch)))

    def backward(self, fwd: Forward, extra: Sequence[Tensor] | None = None) -> StepResult:
        """Balance ``fwd``'s task losses into ``.grad``.

        ``extra`` (T scalars) are further per-task losses (MDML's mimicry): a loss weighting adds
        their sum to its combined loss unweighted; a gradient method sees L_t + extra_t as task t's
        loss. Pass a list rather than a stacked vector, for the reason given in :class:`Forward`.
        """
        if extra is not None:
            extra = self.comm.globalize(extra)
        result = self.strategy.backward(fwd, extra, self.step_count)
        self.step_count += 1
        return result

    def after_step(self, batch: dict[str, Tensor]) -> None:
        """Call after the optimizer step with the step's batch. For a method that declares
        ``reevaluate`` (FAMO), one forward pass without gradients gives the batch's losses at the
        new parameters, handed to ``method.observe_losses_after_step``; otherwise nothing.

        The model stays in its mode (training, as for the step's own forward), so batch
        normalisation uses the batch's statistics and its running averages see the batch a
        second time, as in the authors' code.
        """
        if not self.method.requirements.reevaluate:
            return
        with torch.no_grad():
            with self.precision.autocast():
                preds = self.model(batch["image"])
            preds = _float(preds) if self.precision.enabled else preds
            losses = torch.stack(self.comm.globalize(self.task_loss_parts(preds, batch)))
        self.method.observe_losses_after_step(losses.detach())

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Step count, the last coefficients (reused under ``recompute_every``) and, for a method
        given layer gradient norms, the layer chosen; tensors and plain values only."""
        return {"step": self.step_count, **self.strategy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; also reads ``engine_step``/``engine_coefficients``, the keys
        member checkpoints carried before the engine had a state of its own."""
        self.step_count = int(state.get("step", state.get("engine_step", 0)))
        self.strategy.load_state_dict(state)


def check_model(model: object, tasks: TaskSet | Sequence[str]) -> None:
    """A MultiTaskModel (an :class:`EngineModel` module) that has every task of ``tasks``, or a
    one-line ConfigError."""
    if not isinstance(model, nn.Module) or not isinstance(model, EngineModel):
        raise ConfigError(
            f"Engine needs a densemtl MultiTaskModel, got {type(model).__name__}; for your own nn.Module "
            "use densemtl.backward(losses, shared_params, method) (docs/python.md)"
        )
    if isinstance(tasks, str) or not tasks:
        raise ConfigError(f"Engine: tasks must be a non-empty sequence of task names, got {tasks!r}")
    missing = [t for t in tasks if t not in model.tasks]
    if missing:
        raise ConfigError(
            f"Engine: task(s) {', '.join(map(repr, missing))} are not tasks of {type(model).__name__} "
            f"(its tasks: {', '.join(model.tasks)})"
        )


def check_split(model: EngineModel, shared: Sequence[Tensor]) -> None:
    """A one-line ConfigError naming ``model``'s class unless its parameters split into shared
    ones and ones each task owns: some parameter owned by a task (``task_parameters``; by default
    those of ``self.heads[task]``), none owned by two tasks nor both shared and a task's."""
    name = type(model).__name__
    owner: dict[int, str] = {}
    for t in model.tasks:
        for p in model.task_parameters(t):
            if owner.setdefault(id(p), t) != t:
                raise ConfigError(f"{name}: a parameter is owned by both task {owner[id(p)]!r} and task {t!r} "
                                  "(task_parameters(t) must be the parameters task t alone uses)")  # fmt: skip
    if not owner and any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"{name}: no task owns a parameter (task_parameters gives none: name the heads self.heads, an "
            "nn.ModuleDict by task, or override task_parameters(task)); every parameter would be shared"
        )
    both = [p for p in shared if id(p) in owner]
    if both:
        raise ConfigError(
            f"{name}: {len(both)} parameter(s) both shared (shared_parameters) and owned by task "
            f"{owner[id(both[0])]!r} (task_parameters)"
        )


def check_declaration(method: BalancingMethod) -> None:
    """A one-line ConfigError unless ``method`` declares ``requirements`` it can honour (an
    instance may set its own in ``__init__``: checked here, the class's when it was defined)."""
    from densemtl.balancing.base import protocol_gap

    gap = protocol_gap(method) if isinstance(method, BalancingMethod) else "it is not a BalancingMethod"
    if gap:
        raise ConfigError(f"Engine: method {type(method).__name__}: {gap}")


def check_batch(batch: Mapping[str, Tensor], tasks: Sequence[str]) -> None:
    """A batch with an ``image`` and a target for every task, or a one-line ConfigError."""
    if not isinstance(batch, Mapping):
        raise ConfigError(f"Engine.step takes one batch as a dict of tensors, got {type(batch).__name__}")
    missing = [k for k in ("image", *tasks) if k not in batch]
    if missing:
        raise ConfigError(
            f"Engine.step: the batch has no {', '.join(map(repr, missing))} "
            f"(its keys: {', '.join(map(str, batch)) or 'none'})"
        )


def _float(preds: dict[str, Tensor]) -> dict[str, Tensor]:
    """Autocast's half-precision predictions as float32, so that the losses are float32."""
    return {k: v.float() if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in preds.items()}

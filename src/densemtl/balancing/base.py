"""What a balancing method is: one typed declaration of its needs, and three helper base classes.

Every method carries ``requirements``, a frozen :class:`Requirements`: the gradient sources it
can use, whether it keeps per-coordinate state, the shared layer whose gradient norms it needs,
whether it re-evaluates the batch after the step, the optimizer its update is applied with,
whether its combined loss is exactly Σ_t w_t L_t, and the transform of the losses it balances.
The engine and the trainer read that declaration and nothing else about a method, so a new
method never edits them.

The base classes only save boilerplate:

- ``LossWeighting``: sees the T task losses (and their history) and gives T weights; the
  update is the gradient of sum_t w_t L_t. EW, UW, DWA, ...
- ``Aggregator``: sees the Jacobian J (T x P) of the task losses with respect to the shared
  parameters and gives one vector ``aggregate(J) -> Tensor[P]``. A ``GramianWeighting`` is an
  aggregator whose output is ``w(G) @ J`` with weights computed from the Gramian G = J J^T alone,
  which lets the engine avoid J, reduce a T x T matrix across processes, or reuse weights.
- ``OptimizerMethod``: consumes the per-task gradients itself (MAO). It is an ``Aggregator`` whose
  ``aggregate(J)`` returns the step of the shared parameters, applied by plain SGD at the
  learning rate (``Requirements.optimizer == "sgd"``); the other parameters are trained by AdamW.

Everything that carries state exposes ``state_dict``/``load_state_dict``; random methods draw
from the ``torch.Generator`` given to ``set_generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from densemtl.errors import ConfigError

#: where the per-task signal comes from: the losses themselves, the gradients of the shared
#: representation, the Gramian G = J Jᵀ of the shared parameters' gradients (the update is then
#: c(G) @ J), the Jacobian J itself, or J handed over one row at a time
Source = Literal["losses", "representation", "gramian", "jacobian", "rows"]
SOURCES: tuple[Source, ...] = get_args(Source)
#: the engine mode (``--grad-mode``) each source is computed in
MODE_OF: dict[Source, str] = {
    "losses": "loss",
    "representation": "representation",
    "gramian": "gramian",
    "jacobian": "parameters",
    "rows": "parameters",
}


@dataclass(frozen=True)
class Requirements:
    """What a method needs from the engine and the trainer, declared once per class (or instance).

    - ``sources``: the gradient sources the method can use, in order of preference; the engine's
      default mode is the first one the model offers (the representation needs
      ``model.has_representation``). "losses" stands alone (a loss weighting); "gramian" means
      the update is c(G) @ J with c from the Gramian alone, which also allows reusing c for
      several steps (``--recompute-every``).
    - ``coordinate_state``: the method keeps state for each coordinate of J across steps, which
      the representation of another batch does not have: the representation is refused.
    - ``layer_grad_norms``: None, or the shared layer whose per-task gradient norms ‖∇_W L_t‖ the
      method receives before each ``combine`` (``observe_grad_norms``): a parameter name of
      ``model.named_shared_parameters()``, or "auto" for the last shared kernel to run.
    - ``reevaluate``: after the optimizer step the engine re-evaluates the same batch (one
      no-grad forward) and hands the new losses to ``observe_losses_after_step``.
    - ``optimizer``: what steps the shared parameters with the update left in ``.grad``: "adam"
      (the run's optimizer for every parameter) or "sgd" (plain SGD at the learning rate, for an
      update that already is the step, like MAO's).
    - ``weighted_sum``: the method's ``combine`` returns exactly Σ_t w_t L_t with the w it
      returns, so that the engine may assemble the update from per-task pieces.
    - ``loss_transform``: the function of the losses whose gradients a gradient method balances
      (None: the losses themselves; DB-MTL: their logarithm).
    - ``weights_from_losses``: a loss weighting's weights depend on the values of this step's
      losses (the default). False (EW, RLW, DWA): they come from the number of tasks, the
      method's state or its random draws alone, so that the method also weighs a Jacobian,
      ``method(J) = w @ J``.
    """

    sources: tuple[Source, ...]
    coordinate_state: bool = False
    layer_grad_norms: str | None = None
    reevaluate: bool = False
    optimizer: Literal["adam", "sgd"] = "adam"
    weighted_sum: bool = False
    loss_transform: Callable[[Tensor], Tensor] | None = None
    weights_from_losses: bool = True

    def __post_init__(self) -> None:
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise ValueError(f"Requirements.sources must be distinct and non-empty, got {self.sources}")
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"Requirements.sources: unknown {unknown}; valid: {', '.join(SOURCES)}")
        if "losses" in self.sources and len(self.sources) > 1:
            raise ValueError("Requirements.sources: 'losses' (a loss weighting) cannot be combined with others")
        if self.coordinate_state and "representation" in self.sources:
            raise ValueError("Requirements: per-coordinate state rules out the 'representation' source")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"Requirements.optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not self.uses_losses and (self.layer_grad_norms is not None or self.weighted_sum):
            raise ValueError("Requirements: layer_grad_norms and weighted_sum are for loss weightings")
        if self.uses_losses and self.loss_transform is not None:
            raise ValueError("Requirements: loss_transform is for gradient methods")
        if not self.uses_losses and not self.weights_from_losses:
            raise ValueError("Requirements: weights_from_losses is for loss weightings")

    @property
    def uses_losses(self) -> bool:
        """Whether the method is a loss weighting (mode "loss")."""
        return self.sources == ("losses",)

    @property
    def from_gramian(self) -> bool:
        """Whether the update is c(G) @ J with c computed from the Gramian alone."""
        return "gramian" in self.sources

    @property
    def streams_rows(self) -> bool:
        """Whether, in parameters mode, J is handed over row by row (``start_rows``/``add_row``/
        ``finish_rows``), keeping one row instead of T."""
        whole = [s for s in self.sources if s in ("rows", "jacobian")]
        return bool(whole) and whole[0] == "rows"

    @property
    def modes(self) -> tuple[str, ...]:
        """The engine modes the method can run in, in order of preference."""
        return tuple(dict.fromkeys(MODE_OF[s] for s in self.sources))

    def default_mode(self, has_representation: bool) -> str:
        """The first mode of ``modes`` the model offers."""
        for mode in self.modes:
            if mode != "representation" or has_representation:
                return mode
        return self.modes[-1]


def _overrides(cls: type, attr: str, base: type) -> bool:
    """Whether ``cls`` defines ``attr`` other than ``base`` does (``base`` need not have it)."""
    mine = getattr(cls, attr, None)
    return callable(mine) and mine is not getattr(base, attr, None)


def declaration_gap(cls: type, req: Requirements) -> str:
    """What ``cls`` lacks to honour ``req`` ("" when nothing): the override each declaration
    needs. "losses" needs ``combine(losses)`` (a LossWeighting); a gradient source needs
    ``aggregate(J)`` (an Aggregator); "gramian" needs ``weights_from_gramian(G)`` (a
    GramianWeighting); "rows" needs its own ``add_row``/``finish_rows``; ``layer_grad_norms`` needs
    ``observe_grad_norms``; ``reevaluate`` needs ``observe_losses_after_step``. Whether an abstract
    method is implemented is checked when the method is made (:func:`protocol_gap`)."""
    said = f"declares sources={req.sources!r}"
    if req.uses_losses:
        if not callable(getattr(cls, "combine", None)):
            return f"{said} but has no combine(losses); subclass densemtl.balancing.base.LossWeighting"
        if req.layer_grad_norms is not None and not _overrides(cls, "observe_grad_norms", LossWeighting):
            return (
                f"declares layer_grad_norms={req.layer_grad_norms!r} but does not override "
                "observe_grad_norms(norms), so the norms would be dropped"
            )
    else:
        if isinstance(cls, type) and issubclass(cls, LossWeighting):
            return (
                f"{said} but is a LossWeighting (it gives weights of losses); subclass Aggregator for a gradient source"
            )
        if not callable(getattr(cls, "aggregate", None)) or not callable(getattr(cls, "finish_rows", None)):
            return f"{said} but has no aggregate(J); subclass densemtl.balancing.base.Aggregator"
        if req.from_gramian and not callable(getattr(cls, "weights_from_gramian", None)):
            return (
                f"{said} but does not define weights_from_gramian(G), which the 'gramian' source calls; "
                "subclass densemtl.balancing.base.GramianWeighting"
            )
        if "rows" in req.sources and not (
            _overrides(cls, "add_row", Aggregator) and _overrides(cls, "finish_rows", Aggregator)
        ):
            return (
                f"{said} but does not override add_row(t, g) and finish_rows(); declare 'jacobian' to be given J whole"
            )
    if req.reevaluate and not _overrides(cls, "observe_losses_after_step", BalancingMethod):
        return "declares reevaluate=True but does not override observe_losses_after_step(losses)"
    return ""


class BalancingMethod:
    """Common base: the declaration, state, hooks and a random generator.

    A subclass's ``requirements`` are checked against the methods it implements when the class
    is defined (:func:`declaration_gap`): a declaration the class cannot honour is a TypeError
    naming the class and the override it lacks, not an AttributeError at the first step.
    """

    requirements: Requirements

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        req = getattr(cls, "requirements", None)
        if isinstance(req, Requirements):  # a property or an instance's own: checked when made
            gap = declaration_gap(cls, req)
            if gap:
                raise TypeError(f"{cls.__module__}.{cls.__qualname__}: {gap}")

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

    def parameters_lr(self) -> float | None:
        """The learning rate the trainer should use for ``parameters()`` (None: the run's)."""
        return None

    def optimizer_options(self) -> dict[str, Any]:
        """Keyword arguments (betas, eps, weight_decay) of the AdamW that trains the non-shared
        parameters when ``requirements.optimizer`` is "sgd"."""
        return {}

    def end_epoch(self, epoch: int, mean_losses: Tensor) -> None:
        """Called after each training epoch with the epoch's mean task losses."""
        return None

    def observe_losses_after_step(self, losses: Tensor) -> None:
        """The task losses (T,) of the step's batch, re-evaluated after the optimizer step; called
        by the engine only when ``requirements.reevaluate``."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LossWeighting(BalancingMethod):
    """Turns task losses into one scalar ``sum_t w_t L_t``; subclasses give ``weights``."""

    requirements = Requirements(sources=("losses",))

    def observe_grad_norms(self, norms: Tensor) -> None:
        """Receive ‖∇_W L_t‖ (T,) for the shared layer W of ``requirements.layer_grad_norms``,
        before ``combine``."""
        return None

    def weights(self, losses: Tensor) -> Tensor:
        """Weights (T,) for the detached task losses (T,)."""
        raise NotImplementedError

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """The scalar to back-propagate and the weights used (detached)."""
        from densemtl.plugin_contracts import check_vector

        w = self.weights(losses.detach())
        check_vector(self, "weights(losses)", w, len(losses), losses)  # a user's method: one line
        w = w.to(losses)
        return (w * losses).sum(), w.detach()

    def __call__(self, J: Tensor) -> Tensor:
        """``w @ J`` for the Jacobian J (T x P) of the task losses, when the weights do not depend
        on the losses' values (``requirements.weights_from_losses`` False: EW, RLW, DWA); any other
        loss weighting needs the losses themselves and refuses with a ConfigError."""
        name = type(self).__name__
        if self.requirements.weights_from_losses:
            raise ConfigError(
                f"{name} needs the task losses (its weights follow their values), not a Jacobian: use "
                "densemtl.backward(losses, shared_params, method) or a densemtl.Balancer with the losses"
            )
        if J.dim() != 2:
            raise ValueError(f"{name} expects a matrix J of shape (T, P), got {tuple(J.shape)}")
        w = self.weights(J.new_zeros(J.shape[0]))  # the values are not read
        return w.to(J) @ J


class Aggregator(BalancingMethod):
    """Maps the Jacobian J (T x P) of the shared parameters to one update direction (P,).

    It may be given J whole (``aggregate``) or one row at a time (``start_rows``, ``add_row`` per
    task, ``finish_rows``); by default the rows are gathered into J. A method that folds each row
    in as it comes (MAO) overrides the three and declares the source "rows".
    """

    requirements = Requirements(sources=("jacobian", "representation"))
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

    def row_weights(self) -> Tensor | None:
        """The weights w (T,) with last update = wᵀJ, when the update has that form and w is not
        computed from the Gramian alone (ExcessMTL): each task-specific gradient is then scaled by
        its w_t, as in a backward of Σ_t w_t L_t. None (the default): heads get weight 1."""
        return None

    def aggregate(self, J: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, J: Tensor) -> Tensor:
        if J.dim() != 2:
            name = type(self).__name__
            raise ValueError(f"{name} expects a matrix J of shape (T, P), got {tuple(J.shape)}")
        return self.aggregate(J)


class GramianWeighting(Aggregator):
    """An aggregator of the form ``w(G) @ J``: subclasses implement ``weights_from_gramian``."""

    requirements = Requirements(sources=("jacobian", "representation", "gramian"))

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        raise NotImplementedError

    def aggregate(self, J: Tensor) -> Tensor:
        w = self.weights_from_gramian(J @ J.T)
        return w.to(J) @ J


class OptimizerMethod(Aggregator):
    """Consumes the per-task gradients itself to update the shared parameters.

    ``aggregate(J)`` returns the step direction d of the shared parameters (keeping whatever
    moments it needs between calls, per coordinate: no representation); the trainer applies
    θ ← θ − lr·d with plain SGD. The task-specific parameters get their own task's gradient and
    are trained by AdamW with ``optimizer_options()``, whose ``weight_decay`` the SGD of the
    shared parameters uses too.
    """

    requirements = Requirements(sources=("jacobian",), coordinate_state=True, optimizer="sgd")


def protocol_gap(method: BalancingMethod) -> str:
    """What ``method`` (a plugin's) lacks to be trained with, "" when nothing: a
    :class:`Requirements` declaration, and a way to balance (``weights`` or ``combine`` of a
    :class:`LossWeighting`; ``aggregate``, ``weights_from_gramian`` or the row stream of an
    :class:`Aggregator`)."""
    cls = type(method)
    if not isinstance(getattr(method, "requirements", None), Requirements):
        return "it declares no 'requirements' (a densemtl.balancing.base.Requirements)"
    gap = declaration_gap(cls, method.requirements)
    if gap:
        return gap
    if isinstance(method, LossWeighting):
        if cls.weights is LossWeighting.weights and cls.combine is LossWeighting.combine:
            return "a LossWeighting must define weights(losses)"
        return ""
    if isinstance(method, GramianWeighting):
        own = cls.weights_from_gramian is not GramianWeighting.weights_from_gramian
        if not own and cls.aggregate is GramianWeighting.aggregate and cls.finish_rows is Aggregator.finish_rows:
            return "a GramianWeighting must define weights_from_gramian(G)"
        return ""
    if isinstance(method, Aggregator):
        if cls.aggregate is Aggregator.aggregate and cls.finish_rows is Aggregator.finish_rows:
            return "an Aggregator must define aggregate(J)"
        return ""
    return "it subclasses BalancingMethod itself, not LossWeighting, Aggregator or GramianWeighting"

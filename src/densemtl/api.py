"""Balancing from Python on one's own model: :func:`backward` and :class:`Balancer`.

For any ``nn.Module`` and T scalar losses computed by one's own forward pass, these fill
``.grad`` with a balancing method's update, as the training engine does for a densemtl model:

- the shared parameters get the method's update (c(G) @ J, an aggregate of J, or the gradient
  of the weighted loss);
- each task's own parameters get their task's gradient, times w_t where the method defines task
  weights (as a backward of Σ_t w_t L_t would give them).

The mode is the cheapest the method allows: one backward of the weighted loss for a loss
weighting; with ``features`` (the shared representation the heads read) the per-task gradients
of that representation, for every method that accepts them; otherwise the method's preferred
source, the Gramian or the Jacobian of the shared parameters. The
engine's strategies (:mod:`densemtl.engine.strategies`) do the work; this module turns the
caller's tensors into their inputs. The tasks' own parameters are found in the autograd graph
(every parameter a loss reaches that is not shared) unless ``task_params`` names them.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from densemtl.balancing import Aggregator, BalancingMethod, Requirements, create
from densemtl.engine.modes import check_mode, check_recompute_every
from densemtl.engine.strategies import STRATEGIES, Context, Forward, StepResult, Strategy
from densemtl.errors import ConfigError

__all__ = ["Balancer", "CallableAggregator", "backward"]

MethodLike = str | BalancingMethod | Callable[[Tensor], Tensor]
Losses = Sequence[Tensor] | Mapping[str, Tensor] | Tensor
Params = Iterable[nn.Parameter] | Iterable[tuple[str, nn.Parameter]]


class CallableAggregator(Aggregator):
    """Any function J (T × P) -> update (P,), e.g. a torchjd aggregator, as a densemtl method."""

    requirements = Requirements(sources=("jacobian", "representation"))

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def aggregate(self, J: Tensor) -> Tensor:
        return self.fn(J)

    def __repr__(self) -> str:
        return f"CallableAggregator({self.fn!r})"


def resolve_method(method: MethodLike) -> BalancingMethod:
    """A method object from a registered name, a method object, or a function of J."""
    if isinstance(method, BalancingMethod):
        return method
    if isinstance(method, str):
        return create(method)
    if callable(method):
        return CallableAggregator(method)
    raise ConfigError(
        "method must be a registered name (densemtl.methods.available()), a BalancingMethod or a "
        f"function of the Jacobian, got {type(method).__name__}"
    )


class Balancer:
    """A balancing method bound to the shared parameters of one's own model, across steps.

    ``method``: a registered name, a method object (``densemtl.methods.create(name, **knobs)``),
    or any function of the Jacobian (a torchjd aggregator). ``shared_params``: the parameters
    every task uses (``trunk.parameters()``, or ``trunk.named_parameters()`` to name them in
    messages and for GradNorm's ``layer``); frozen ones are skipped. ``task_params``: one
    iterable of parameters per task, or None to find them in the graph (a gradient method writes
    no other parameter; a loss weighting's one backward reaches all its loss does). ``mode``: ``"loss"``,
    ``"representation"``, ``"gramian"`` or ``"parameters"``, or None: ``"representation"`` when
    ``features`` are given and the method accepts them, otherwise the method's preferred mode
    (as ``densemtl train`` chooses). ``recompute_every``: reuse c(G) for k steps (methods of the
    Gramian only).

    Call :meth:`backward` once per step, then the optimizer's ``step``; for a method that
    re-evaluates the batch after the step (FAMO), call :meth:`after_step` with the new losses.
    A method that learns parameters of its own (UW) lists them in :meth:`parameters`: add them to
    the optimizer. A method whose update is the step itself (MAO) must be applied to the shared
    parameters with plain SGD (``requirements.optimizer == "sgd"``).
    """

    def __init__(
        self,
        method: MethodLike,
        shared_params: Params,
        *,
        task_params: Sequence[Iterable[nn.Parameter]] | None = None,
        mode: str | None = None,
        recompute_every: int = 1,
    ) -> None:
        self.method = resolve_method(method)
        self.names, self.shared = named_params(shared_params)
        self.task_params = None if task_params is None else _task_params(task_params)
        self.requested_mode = mode
        check_mode(self.method, mode, has_representation=True, flag="mode")  # a bad mode: now
        check_recompute_every(self.method, recompute_every)
        self.recompute_every = recompute_every
        self.step_count = 0
        #: the mode of the last step (None before the first)
        self.mode: str | None = None
        self._strategy: Strategy | None = None
        self._key: tuple[str, int, bool] | None = None
        self._awaiting_losses = False
        if self.requirements.optimizer == "sgd":
            warnings.warn(
                f"{type(self.method).__name__}'s update is the step itself: apply it to the shared "
                "parameters with plain SGD (torch.optim.SGD, no momentum), not Adam",
                stacklevel=2,
            )

    @property
    def requirements(self) -> Requirements:
        """The method's declaration of what it needs (:class:`~densemtl.balancing.Requirements`)."""
        return self.method.requirements

    def parameters(self) -> list[nn.Parameter]:
        """The method's own learnable parameters (UW's log-variances): put them in the optimizer."""
        return self.method.parameters()

    def backward(self, losses: Losses, *, features: Tensor | None = None) -> StepResult:
        """Write the method's update of ``losses`` (T scalars: a list, a dict, or a (T,) tensor)
        into ``.grad``, replacing what was there. ``features``: the shared representation the
        losses were computed from (the trunk's output, not detached), which makes the per-task
        gradients T small backward passes through the heads where the method allows it.
        Returns the detached losses and the task weights used."""
        if self._awaiting_losses:
            raise ConfigError(
                f"{type(self.method).__name__} re-evaluates the batch after each optimizer step: call "
                "balancer.after_step(losses_after_step) before the next backward"
            )
        parts, tasks = loss_parts(losses)
        mode = self._mode(features)
        rep = features if mode == "representation" or self._splits(mode, features) else None
        if rep is not None:
            _check_features(rep)
        own = self._own(parts, rep)
        strategy = self._strategy_for(mode, tasks, own, rep is not None)
        strategy.ctx.own = own
        strategy.ctx.zero_grad()
        for p in self.method.parameters():
            p.grad = None
        # rep_in is rep itself: the heads read the caller's representation, whose gradient is
        # taken where the graph passes through it (no detached copy exists)
        result = strategy.backward(Forward({}, parts, rep, rep), None, self.step_count)
        self.step_count += 1
        self.mode = mode
        self._awaiting_losses = self.requirements.reevaluate
        return result

    def after_step(self, losses: Losses) -> None:
        """Hand the same batch's losses at the new parameters (computed after ``optimizer.step()``,
        under ``torch.no_grad()``) to a method that declares ``reevaluate`` (FAMO); otherwise nothing."""
        if not self.requirements.reevaluate:
            return
        parts, _ = loss_parts(losses, need_grad=False)
        self.method.observe_losses_after_step(torch.stack(parts).detach())
        self._awaiting_losses = False

    def state_dict(self) -> dict[str, Any]:
        """The method's state and the step count."""
        return {"method": self.method.state_dict(), "step": self.step_count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.method.load_state_dict(dict(state.get("method", {})))
        self.step_count = int(state.get("step", 0))

    # -- pieces -----------------------------------------------------------------------------------
    def _mode(self, features: Tensor | None) -> str:
        if self.requested_mode == "representation" and features is None:
            raise ConfigError("mode='representation' needs features= (the shared representation the heads read)")
        if self.requested_mode is None and features is not None and "representation" in self.requirements.modes:
            return "representation"  # features given: the caller asks for the representation's gradients
        return check_mode(self.method, self.requested_mode, has_representation=features is not None, flag="mode")

    def _splits(self, mode: str, features: Tensor | None) -> bool:
        """Whether the loss mode takes GradNorm's layer norms from per-task head passes."""
        return mode == "loss" and features is not None and self.requirements.layer_grad_norms is not None

    def _own(self, parts: list[Tensor], rep: Tensor | None) -> list[list[nn.Parameter]]:
        if self.task_params is not None:
            if len(self.task_params) != len(parts):
                raise ConfigError(f"task_params has {len(self.task_params)} entries for {len(parts)} losses")
            return self.task_params
        return find_task_params(parts, self.shared, self.names, rep)

    def _strategy_for(self, mode: str, tasks: tuple[str, ...], own: list[list[nn.Parameter]], rep: bool) -> Strategy:
        key = (mode, len(tasks), rep)
        if self._strategy is None or self._key != key:
            ctx = Context(None, self.method, tasks, self.shared, own, representation=rep, names=self.names)
            self._strategy = STRATEGIES[mode](ctx, self.recompute_every)
            self._key = key
        return self._strategy


#: methods created by name in :func:`backward`: id of the first shared parameter -> {name: (the
#: ids of every shared parameter, the method)}, so that they keep their state across calls; an
#: entry is dropped with its parameter
_BY_NAME: dict[int, dict[str, tuple[tuple[int, ...], BalancingMethod]]] = {}


def backward(
    losses: Losses,
    shared_params: Params,
    method: MethodLike,
    *,
    features: Tensor | None = None,
    task_params: Sequence[Iterable[nn.Parameter]] | None = None,
    mode: str | None = None,
) -> StepResult:
    """Fill ``.grad`` with ``method``'s update of ``losses`` (T scalar tensors), as
    ``sum(losses).backward()`` does for equal weights; the arguments are :class:`Balancer`'s.

    A method object keeps its state across calls (pass the same object every step); a name
    creates the method once per set of shared parameters and reuses it. A method that needs a
    call after the optimizer step (FAMO) or learns parameters of its own (UW, by name) is
    refused with the way to use it: a :class:`Balancer`, or the method object.
    """
    names, shared = named_params(shared_params)
    resolved = _by_name(method, shared) if isinstance(method, str) else method
    balancer = Balancer(resolved, list(zip(names, shared, strict=True)), task_params=task_params, mode=mode)
    if balancer.requirements.reevaluate:
        raise ConfigError(
            f"{type(balancer.method).__name__} re-evaluates the batch after the optimizer step: use "
            "b = densemtl.Balancer(...), b.backward(losses), optimizer.step(), b.after_step(new_losses) "
            "(or famo with update='next_batch')"
        )
    result = balancer.backward(losses, features=features)
    if isinstance(method, str) and balancer.parameters():
        raise ConfigError(
            f"{method} learns parameters of its own: create it with densemtl.methods.create({method!r}, "
            "num_tasks=T), add its .parameters() to your optimizer, and pass the object"
        )
    return result


def _by_name(name: str, shared: list[nn.Parameter]) -> BalancingMethod:
    """The method called ``name`` made for these shared parameters (created on first use)."""
    if not shared:
        return create(name)
    ids = tuple(id(p) for p in shared)
    if ids[0] not in _BY_NAME:
        _BY_NAME[ids[0]] = {}
        weakref.finalize(shared[0], _BY_NAME.pop, ids[0], None)
    made = _BY_NAME[ids[0]]
    if name not in made or made[name][0] != ids:
        made[name] = (ids, create(name))
    return made[name][1]


def named_params(params: Params) -> tuple[list[str], list[nn.Parameter]]:
    """(names, parameters) of ``params`` (parameters or (name, parameter) pairs), frozen ones left out."""
    if isinstance(params, Tensor):
        params = [params]
    names, out = [], []
    for i, item in enumerate(params):
        name, p = item if isinstance(item, tuple) else (f"shared_params[{i}]", item)
        if not isinstance(p, Tensor):
            raise ConfigError(f"shared_params[{i}] is a {type(p).__name__}, not a parameter")
        if p.requires_grad:
            names.append(str(name))
            out.append(p)
    if len({id(p) for p in out}) != len(out):
        raise ConfigError("shared_params lists a parameter twice")
    return names, out


def _task_params(task_params: Sequence[Iterable[nn.Parameter]]) -> list[list[nn.Parameter]]:
    if isinstance(task_params, Tensor) or not isinstance(task_params, Sequence):
        raise ConfigError("task_params must be a list with one iterable of parameters per task")
    return [[p for p in ps if p.requires_grad] for ps in task_params]


def loss_parts(losses: Losses, need_grad: bool = True) -> tuple[list[Tensor], tuple[str, ...]]:
    """The T scalar losses as a list, and the task names (``task0``, … unless given as a dict)."""
    if isinstance(losses, Mapping):
        tasks, items = tuple(map(str, losses)), list(losses.values())
    elif isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ConfigError(f"losses: a tensor of losses must have shape (T,), got {tuple(losses.shape)}")
        items = list(losses.unbind())
        tasks = tuple(f"task{t}" for t in range(len(items)))
    elif isinstance(losses, Sequence) and not isinstance(losses, str):
        items = list(losses)
        tasks = tuple(f"task{t}" for t in range(len(items)))
    else:
        raise ConfigError(f"losses must be a list of scalar tensors (one per task), got {type(losses).__name__}")
    if not items:
        raise ConfigError("losses is empty: pass one scalar loss per task")
    parts = []
    for i, loss in enumerate(items):
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            what = f"of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else f"a {type(loss).__name__}"
            raise ConfigError(f"losses[{i}] is {what}, not a scalar tensor (reduce it, e.g. with .mean())")
        if need_grad and not loss.requires_grad:
            raise ConfigError(f"losses[{i}] does not require grad (computed under torch.no_grad(), or detached?)")
        parts.append(loss.reshape(()))
    return parts, tasks


def _check_features(features: Tensor) -> None:
    if not isinstance(features, Tensor) or features.grad_fn is None:
        raise ConfigError(
            "features must be the shared representation as the trunk computed it (a tensor with a "
            "grad_fn), not a detached copy or a leaf"
        )


def find_task_params(
    parts: list[Tensor], shared: list[nn.Parameter], names: list[str], rep: Tensor | None
) -> list[list[nn.Parameter]]:
    """Per task, the trainable leaves its loss reaches that are not shared (above ``rep`` when
    given). A leaf two tasks reach must be shared; with ``rep``, no loss may reach a shared
    parameter other than through it."""
    shared_names = {id(p): n for p, n in zip(shared, names, strict=True)}
    stop = rep.grad_fn if rep is not None else None
    own: list[list[nn.Parameter]] = []
    owner: dict[int, int] = {}
    for t, loss in enumerate(parts):
        mine = []
        for leaf in _leaves(loss, stop):
            if id(leaf) in shared_names:
                if rep is not None:
                    raise ConfigError(
                        f"loss {t} reaches shared parameter {shared_names[id(leaf)]} without passing through "
                        "features: pass the representation every shared path ends in, or no features="
                    )
                continue
            if id(leaf) in owner:
                raise ConfigError(
                    f"a parameter of shape {tuple(leaf.shape)} is used by tasks {owner[id(leaf)]} and {t} but "
                    "is not in shared_params: add it there, or pass task_params"
                )
            owner[id(leaf)] = t
            mine.append(leaf)
        own.append(mine)
    return own


def _leaves(root: Tensor, stop: Any) -> list[nn.Parameter]:
    """The leaf tensors requiring grad that ``root``'s graph reaches without passing ``stop``."""
    found: list[nn.Parameter] = []
    seen: set[Any] = set()  # the nodes themselves: an id could be reused once its node is freed
    frontier = [root.grad_fn] if root.grad_fn is not None else []
    while frontier:
        node = frontier.pop()
        if node is None or node is stop or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node holds its leaf
        if variable is not None:
            found.append(variable)
        frontier.extend(nxt for nxt, _ in node.next_functions)
    return found

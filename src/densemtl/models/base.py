"""The contract every architecture meets.

A model maps an image batch (B,3,H,W) to ``{task: prediction at input size}`` and says which
parameters are shared between tasks. Models with a single shared trunk also expose it as
``encode`` (image -> shared representation) and ``decode`` (representation -> predictions), so
that the gradient engine can take per-task gradients with respect to the representation.

Deeply supervised models (PAD-Net, MTI-Net) return ``Predictions``: the same ``{task: prediction}``
mapping, carrying the forward's auxiliary predictions in ``.aux``; ``extra_losses(preds, batch,
tasks)`` reads them there. Whoever iterates the predictions sees the tasks only.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping

from torch import Tensor, nn

from densemtl.tasks import TaskSet, as_task_set


class Predictions(dict[str, Tensor]):
    """``{task: prediction at input size}`` plus ``aux``: ``{task: [auxiliary predictions]}``.

    The auxiliary (deep-supervision) predictions of the same forward pass travel with the final
    ones, so the model keeps no tensor between calls and ``extra_losses`` can only ever pair a
    forward's auxiliary outputs with that forward. A plain ``dict`` built from a ``Predictions``
    (``dict(preds)``, a comprehension) drops ``aux``; keys, values and items are the tasks'.
    """

    def __init__(
        self,
        preds: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] = (),
        aux: Mapping[str, list[Tensor]] | None = None,
    ) -> None:
        super().__init__(preds)
        self.aux: dict[str, list[Tensor]] = dict(aux or {})


class MultiTaskModel(nn.Module):
    """Base class of densemtl architectures.

    Subclasses set ``self.tasks`` (ordered task names) and implement ``encode`` and ``decode``,
    or override ``forward`` and set ``has_representation = False``. ``task_parameters(t)`` must be
    the parameters that only task ``t`` uses; everything else is shared.
    """

    has_representation: bool = True

    def __init__(self, task_channels: dict[str, int]) -> None:
        super().__init__()
        if not task_channels:
            raise ValueError("a model needs at least one task")
        self.task_channels = dict(task_channels)
        self.tasks: tuple[str, ...] = tuple(task_channels)

    # -- the shared trunk and the heads -------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Shared representation of ``x`` (one tensor, so its gradient is one tensor)."""
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation")

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        """Task predictions at ``size`` from the shared representation."""
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(x), (x.shape[-2], x.shape[-1]))

    def min_input_side(self) -> int:
        """The smallest height and width this model takes (checked before a run is built, so a
        ``--size`` that does not fit is refused up front). Default 1; poolings raise it."""
        return 1

    # -- which parameters are whose -------------------------------------------------------------
    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters used by ``task`` alone. Default: those of ``self.heads[task]``."""
        heads = getattr(self, "heads", None)
        if isinstance(heads, nn.ModuleDict) and task in heads:
            return list(heads[task].parameters())
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter that is not task-specific, in a fixed order."""
        own = {id(p) for t in self.tasks for p in self.task_parameters(t)}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in own]

    def named_shared_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        own = {id(p) for t in self.tasks for p in self.task_parameters(t)}
        for name, p in self.named_parameters():
            if p.requires_grad and id(p) not in own:
                yield name, p

    def extra_losses(
        self, preds: dict[str, Tensor], batch: dict[str, Tensor], tasks: TaskSet | None = None
    ) -> dict[str, Tensor]:
        """Auxiliary per-task losses (deep supervision) of the forward that returned ``preds``;
        ``tasks`` the run's configured tasks (None: the model's, with their defaults).

        :meth:`task_losses` adds ``extra_losses(preds, batch, tasks)[t]`` to task ``t``'s loss.
        Default: none.
        """
        return {}

    def task_losses(
        self, preds: dict[str, Tensor], batch: dict[str, Tensor], tasks: TaskSet | Iterable[str] | None = None
    ) -> dict[str, Tensor]:
        """Each task's loss plus its :meth:`extra_losses`: the per-task losses that training
        balances. ``tasks``: the run's TaskSet, whose knobs set the losses (names, or None for every
        task of the model: their defaults), in order."""
        task_set = as_task_set(self.tasks if tasks is None else tasks)
        losses = task_set.losses(preds, batch)
        extra_losses = self.extra_losses
        takes_tasks = len(inspect.signature(extra_losses).parameters) >= 3  # an override of 0.5's two-argument form
        extras = extra_losses(preds, batch, task_set) if takes_tasks else extra_losses(preds, batch)  # type: ignore[call-arg]
        for task, extra in extras.items():
            losses[task] = losses[task] + extra
        return losses

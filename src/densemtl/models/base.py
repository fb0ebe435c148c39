"""The contract every architecture meets.

A model maps an image batch (B,3,H,W) to ``{task: prediction at input size}`` and says which
parameters are shared between tasks. Models with a single shared trunk also expose it as
``encode`` (image -> shared representation) and ``decode`` (representation -> predictions), so
that the gradient engine can take per-task gradients with respect to the representation.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn


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

    def extra_losses(self, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hook for auxiliary per-task losses (deep supervision); added to the task's loss."""
        return {}

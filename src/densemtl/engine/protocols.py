"""What the engine asks of a model: :class:`EngineModel`.

The engine knows a model only by this protocol, so that it imports no architecture (and
``import densemtl.api`` none). Every :class:`~densemtl.models.base.MultiTaskModel` meets it; so
may any ``nn.Module`` that says which parameters are shared and which each task owns.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class EngineModel(Protocol):
    """A multi-task network as the engine drives it.

    ``tasks`` are its task names in order; ``task_parameters(t)`` the parameters only task ``t``
    uses; ``shared_parameters()`` / ``named_shared_parameters()`` every other trainable one.
    With ``has_representation``, ``encode`` gives the one shared representation and ``decode``
    the predictions from it (the cheap per-task gradients); ``task_losses`` gives each task's
    loss of a forward's predictions (its auxiliary losses included). Calling it maps an image
    batch to ``{task: prediction}``; being an ``nn.Module``, it has ``parameters()``,
    ``modules()`` and ``zero_grad()``.
    """

    tasks: tuple[str, ...]
    has_representation: bool

    def __call__(self, x: Tensor) -> dict[str, Tensor]: ...

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]: ...

    def task_parameters(self, task: str) -> list[nn.Parameter]: ...

    def shared_parameters(self) -> list[nn.Parameter]: ...

    def named_shared_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

    def task_losses(
        self, preds: dict[str, Tensor], batch: dict[str, Tensor], tasks: Iterable[str] | None = None
    ) -> dict[str, Tensor]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...

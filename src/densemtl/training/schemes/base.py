"""The training scheme: how the members of a run learn together from one batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from densemtl.engine import StepResult
from densemtl.training.config import TrainConfig
from densemtl.training.member import Member, MemberSpec


class Scheme(ABC):
    """The members a run trains and what one batch does to them.

    The trainer builds one :class:`~densemtl.training.member.Member` per spec of
    :meth:`members`, in order (the first is the main network: its metrics are the run's
    ``"val"``). For every batch it zeroes each member's gradients, calls :meth:`step`, which
    leaves each member's update in its ``.grad`` and returns one ``StepResult`` per member, then
    steps each member's optimizer and calls its engine's ``after_step(batch)``. A member that a
    scheme does not train (a frozen teacher, say) simply gets no ``.grad``. :meth:`start_epoch`
    runs before an epoch's first batch; :meth:`record` adds the scheme's own fields to the
    epoch's record. A new scheme is a subclass; the trainer's loop does not change.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def members(self) -> list[MemberSpec]:
        """The members to build, main network first."""

    def start_epoch(self, epoch: int) -> None:
        """Set up what the scheme needs for ``epoch`` (1-based); by default nothing."""
        return None

    @abstractmethod
    def step(self, members: Sequence[Member], batch: dict[str, Tensor]) -> list[StepResult]:
        """Leave each member's update for ``batch`` in its ``.grad``; one result per member."""

    def record(self) -> dict[str, Any]:
        """Fields of the current epoch's record that belong to the scheme."""
        return {}

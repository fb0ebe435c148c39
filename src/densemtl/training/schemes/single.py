"""One network trained on its own balanced task losses."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from densemtl.engine import StepResult
from densemtl.training.member import Member, MemberSpec
from densemtl.training.schemes.base import Scheme


class Single(Scheme):
    """The plain run: one member, one ``engine.step`` per batch."""

    def members(self) -> list[MemberSpec]:
        return [MemberSpec()]

    def step(self, members: Sequence[Member], batch: dict[str, Tensor]) -> list[StepResult]:
        return [members[0].engine.step(batch)]

"""The per-epoch validation table printed during training: the columns each task declares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from densemtl import tasks as task_registry

WIDTH = 8


def metrics_header(tasks: Sequence[str]) -> str:
    """The header line: ``epoch`` then every task's column labels."""
    cells = ["epoch".rjust(5)]
    for t in tasks:
        cells += [c.label.rjust(WIDTH) for c in task_registry.get(t).table_columns()]
    return " ".join(cells)


def metrics_row(epoch: int, metrics: Mapping[str, Mapping[str, float | None]], tasks: Sequence[str]) -> str:
    """One epoch's line; a missing or NaN metric shows as ``-``."""
    cells = [str(epoch).rjust(5)]
    for t in tasks:
        for c in task_registry.get(t).table_columns():
            value = metrics[t].get(c.metric)
            ok = value is not None and value == value
            cells.append((c.fmt.format(value) if ok else "-").rjust(WIDTH))
    return " ".join(cells)

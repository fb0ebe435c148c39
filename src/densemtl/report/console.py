"""The per-epoch validation table printed during training: the columns each task declares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from densemtl.tasks import TaskSet, as_task_set

WIDTH = 8


def metrics_header(tasks: TaskSet | Sequence[str]) -> str:
    """The header line: ``epoch`` then every task's column labels (``tasks``: the run's TaskSet,
    or names: their defaults)."""
    cells = ["epoch".rjust(5)]
    for task in as_task_set(tasks).values():
        cells += [c.label.rjust(WIDTH) for c in task.table_columns()]
    return " ".join(cells)


def metrics_row(epoch: int, metrics: Mapping[str, Mapping[str, float | None]], tasks: TaskSet | Sequence[str]) -> str:
    """One epoch's line; a missing or NaN metric shows as ``-``."""
    cells = [str(epoch).rjust(5)]
    for t, task in as_task_set(tasks).items():
        for c in task.table_columns():
            value = metrics[t].get(c.metric)
            ok = value is not None and value == value
            cells.append((c.fmt.format(value) if ok else "-").rjust(WIDTH))
    return " ".join(cells)

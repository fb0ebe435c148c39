"""The configured tasks of one run: :class:`TaskSet`, built once and passed down.

A task is instantiated here and nowhere else. A run builds its set once, from its task names,
the dataset's ``task_args`` (NYUD's ``{"edge": {"max_dist": 0.011}}``) and the run's own
``task_args`` over them, knob by knob (``--task-arg TASK:KEY=VALUE``, YAML ``task_args:``). The
losses, metrics, console columns, plots, pictures, mimicry, ensembles and deep supervision all
ask that set, so a knob reaches the training loss and the metric alike.

A task's knobs are its constructor's keyword arguments with defaults (:func:`task_knobs`); the
same table validates ``--task-arg`` and is what ``densemtl list`` shows.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor

from densemtl.errors import ConfigError
from densemtl.registry import check_knob_type, did_you_mean
from densemtl.tasks.base import Task

#: Per task, its knobs: ``{"edge": {"pos_weight": 0.5}}``.
TaskArgs = Mapping[str, Mapping[str, Any]]

#: Where the run's own knobs come from, as the errors name it.
FLAG = "--task-arg"


def task_knobs(name: str) -> dict[str, Any]:
    """The knobs of task ``name`` and their defaults, in order: its constructor's keyword
    arguments with defaults (an unknown name: ConfigError listing the tasks)."""
    from densemtl.tasks.base import TASKS

    return {k: p.default for k, p in TASKS.knobs(name).items() if p.default is not p.empty}


def _takes_any(name: str) -> bool:
    """Whether task ``name``'s constructor takes ``**kwargs`` (then any knob is its to check)."""
    from densemtl.tasks.base import TASKS

    params = inspect.signature(TASKS.get(name)).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in params)


def _listing(knobs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in knobs.items()) or "none"


def _check_knobs(name: str, knobs: Mapping[str, Any], where: Mapping[str, str]) -> None:
    """Each of ``knobs`` is one of task ``name``'s, of its default's type (``where[key]``: how the
    error names the knob's source)."""
    if not knobs or _takes_any(name):
        return
    valid = task_knobs(name)
    for key, value in knobs.items():
        if key not in valid:
            raise ConfigError(
                f"{where[key]}: task {name!r} has no knob {key!r}{did_you_mean(key, valid)}; "
                f"its knobs: {_listing(valid)}"
            )
        try:
            check_knob_type("task", name, key, value, valid[key])
        except ConfigError as e:
            raise ConfigError(f"{where[key]}: {e}") from None


def _create(name: str, knobs: Mapping[str, Any]) -> Task:
    """Task ``name`` with ``knobs`` (already checked): the one place a task is instantiated."""
    from densemtl.plugin_contracts import task_gap
    from densemtl.plugin_faults import call_factory  # a plugin's failure: one line naming it
    from densemtl.tasks.base import TASKS

    return call_factory("task", TASKS.canonical(name), TASKS.get(name), dict(knobs), Task, check=task_gap)


class TaskSet(Mapping[str, Task]):
    """The configured tasks of a run, in order: an immutable mapping name -> :class:`Task`.

    ``TaskSet(names)`` builds every task with its defaults; ``defaults`` (a dataset's
    ``task_args``) and then ``task_args`` (the run's) set knobs. Knobs for a task the run lacks
    are refused when they are the run's (one line naming ``--task-arg`` and the run's tasks) and
    ignored when they are the dataset's (NYUD's edge tolerance in a run without edges). An
    unknown knob, a value of the wrong type or out of range is a one-line ConfigError naming it.
    Iterating gives the names, as a tuple of them would. ``source`` is how errors name where
    ``task_args`` came from (``--task-arg``).
    """

    def __init__(
        self,
        names: Iterable[str],
        task_args: TaskArgs | None = None,
        *,
        defaults: TaskArgs | None = None,
        source: str = FLAG,
    ) -> None:
        order = tuple(names)
        own = {str(t).lower(): dict(k) for t, k in (task_args or {}).items()}
        for t, knobs in own.items():
            if t not in order:
                from densemtl.tasks.base import TASKS

                given = ", ".join(f"{t}:{k}={v}" for k, v in knobs.items()) or t
                close = "" if TASKS.find(t) else did_you_mean(t, TASKS.available())  # misspelt, or not this run's
                raise ConfigError(
                    f"{source} {given}: this run has no task {t!r}{close}; its tasks: {', '.join(order) or 'none'}"
                )
        base = {str(t).lower(): dict(k) for t, k in (defaults or {}).items()}
        self._tasks: dict[str, Task] = {}
        self._knobs: dict[str, dict[str, Any]] = {}
        for name in order:
            mine = own.get(name, {})
            knobs = {**base.get(name, {}), **mine}
            where = {k: f"{source} {name}:{k}" if k in mine else f"the dataset's task_args {name}:{k}" for k in knobs}
            _check_knobs(name, knobs, where)
            try:
                self._tasks[name] = _create(name, knobs)
            except ConfigError as e:
                if type(e) is not ConfigError or not knobs:
                    raise  # a plugin's failure says so itself; a bad name lists the tasks
                given = ",".join(f"{k}={v}" for k, v in mine.items())
                raise ConfigError(f"{f'{source} {name}:{given}' if mine else where[next(iter(knobs))]}: {e}") from None
            self._knobs[name] = knobs

    # -- the mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Task:
        return self._tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        parts = [f"{t}({_listing(k)})" if k else t for t, k in self._knobs.items()]
        return f"TaskSet({', '.join(parts)})"

    @property
    def names(self) -> tuple[str, ...]:
        """The task names, in order."""
        return tuple(self._tasks)

    @property
    def knobs(self) -> dict[str, dict[str, Any]]:
        """The knobs each task was given (the dataset's and the run's; defaults left out)."""
        return {t: dict(k) for t, k in self._knobs.items()}

    def subset(self, names: Iterable[str]) -> TaskSet:
        """The tasks ``names`` of this set (each configured as here), in that order; a name the
        set lacks is a ConfigError listing its tasks."""
        names = tuple(names)
        missing = [t for t in names if t not in self._tasks]
        if missing:
            raise ConfigError(f"task(s) {', '.join(missing)} not in the task set; its tasks: {', '.join(self._tasks)}")
        out = TaskSet(())
        out._tasks = {t: self._tasks[t] for t in names}
        out._knobs = {t: self._knobs[t] for t in out._tasks}
        return out

    # -- what a run asks of its tasks -------------------------------------------------------------
    def channels(self, num_classes: int) -> dict[str, int]:
        """Output channels of each task's head, in order; a task (a plugin's) whose ``channels``
        is not a whole number >= 1 is a one-line error naming it."""
        from densemtl.plugin_contracts import guarded, maker

        out: dict[str, int] = {}
        for t, task in self._tasks.items():
            c = guarded(task, "channels()", lambda task=task: task.channels(num_classes))  # type: ignore[misc]
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise ConfigError(f"{maker(task) or f'task {t!r}'}: channels({num_classes}) returned {c!r}, not a "
                                  "number of channels >= 1")  # fmt: skip
            out[t] = c
        return out

    def losses(self, preds: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """One scalar loss per task, in order (a user's task whose loss raises or is not a scalar:
        one line naming it)."""
        from densemtl.plugin_contracts import check_loss, guarded

        out: dict[str, Tensor] = {}
        for t, task in self._tasks.items():
            out[t] = guarded(task, "loss()", lambda task=task, t=t: task.loss(preds[t], batch[t]))  # type: ignore[misc]
            check_loss(task, t, out[t])
        return out

    def mimicry(
        self,
        preds: Mapping[str, Tensor],
        peer_preds: Mapping[str, Tensor],
        batch: Mapping[str, Tensor],
        temperature: float = 1.0,
    ) -> list[Tensor]:
        """Each task's mimicry loss of ``preds`` towards the (detached) ``peer_preds``, in order."""
        return [task.mimicry(preds[t], peer_preds[t], batch[t], temperature) for t, task in self._tasks.items()]

    def ensemble(self, outs: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """The ensemble prediction of every task of ``outs[0]`` from the members' ``outs``."""
        return {t: self._tasks[t].ensemble([o[t] for o in outs]) for t in outs[0]}


def as_task_set(tasks: TaskSet | Iterable[str]) -> TaskSet:
    """``tasks`` itself when it is a :class:`TaskSet`, else the names' tasks with their defaults
    (the public Python API takes names; a run passes its own set)."""
    return tasks if isinstance(tasks, TaskSet) else TaskSet(tasks)

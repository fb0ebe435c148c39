"""Evaluation metrics of the dense tasks and the multi-task performance Δm%.

Each task defines its metrics, their directions and its streaming accumulator (see
``densemtl.tasks.seg``, ``.depth``, ``.normal`` for the formulas); this module runs them over a
split. Everything is accumulated in float64 (the confusion matrix in int64).
:class:`StreamingMetrics` gives the same numbers batch by batch as :func:`evaluate` on the whole
split: both use the same accumulators, whose state is exact sums, counts or kept values (the
normal angles are kept as cosines so that the median is exact). A metric with no valid pixel is
NaN. Depth errors are pixel-weighted over the whole split, like LibMTL's (which weights each
batch by its valid pixels); only MTAN averages per-batch means.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from densemtl import tasks as task_registry
from densemtl.errors import ConfigError
from densemtl.tasks import TaskSet, as_task_set

Metrics = dict[str, dict[str, float]]


def in_delta_m(task: str, metric: str) -> bool:
    """Whether ``metric`` of ``task`` counts in Δm% and model selection (the task's
    ``delta_metrics``; every metric of a task that names none)."""
    if task not in task_registry.available():
        return True
    chosen = task_registry.TASKS.get(task).delta_metrics  # what the class declares
    return chosen is None or metric in chosen


def lower_is_better(task: str, metric: str) -> bool | None:
    """Whether a lower ``metric`` of ``task`` is better; None when the task or metric is unknown."""
    if task not in task_registry.available():
        return None
    return task_registry.TASKS.get(task).lower_is_better.get(metric)


def primary_metric(task: str) -> str:
    """The one metric of ``task`` that tables and model selection use (ConfigError if unknown)."""
    return task_registry.TASKS.get(task).primary


class StreamingMetrics:
    """Accumulates the metrics of ``tasks`` batch by batch; :meth:`compute` equals
    :func:`evaluate` on the concatenated batches (seg and normals exactly, depth to float64
    rounding of the summation order). Each task supplies its own accumulator.

    ``tasks`` is a run's :class:`~densemtl.tasks.TaskSet` (its tasks' knobs, e.g. NYUD's edge
    tolerance, set the metrics), or task names (their defaults)."""

    def __init__(self, tasks: TaskSet | Iterable[str], num_classes: int) -> None:
        self._specs = as_task_set(tasks)
        self.tasks = self._specs.names
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        from densemtl.plugin_contracts import check_accumulator, guarded

        self._acc = {}
        for t, spec in self._specs.items():
            acc = guarded(spec, "accumulator()", lambda spec=spec: spec.accumulator(self.num_classes))  # type: ignore[misc]
            check_accumulator(spec, acc)  # a plugin's task: one line naming it
            self._acc[t] = acc

    @torch.no_grad()
    def update(self, preds: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        """Add one batch; every task of ``self.tasks`` must be in both dicts."""
        for t in self.tasks:
            if t not in preds or t not in targets:
                raise KeyError(f"task {t!r} missing from {'predictions' if t not in preds else 'targets'}")
            self._acc[t].update(preds[t].detach(), targets[t].detach())

    def compute(self) -> Metrics:
        """``{task: {metric: float}}`` over every batch since the last :meth:`reset`."""
        return {t: self._acc[t].compute() for t in self.tasks}


def evaluate(
    preds: Mapping[str, Tensor], targets: Mapping[str, Tensor], num_classes: int, tasks: TaskSet | None = None
) -> Metrics:
    """Metrics of every task of ``preds`` that ``targets`` also has, in the order of ``preds``,
    for one batch (or a whole split in one pair of dicts; over many batches use
    :class:`StreamingMetrics`). ``tasks``: the configured tasks (a :class:`~densemtl.tasks.TaskSet`,
    e.g. ``TaskSet(["edge"], {"edge": {"max_dist": 0.011}})``); default: each task's defaults.

    Every prediction key must be a registered task (ConfigError otherwise); target keys that are
    not predicted (``image``, …) are ignored, and so is a predicted task the targets lack (a
    dataset without it), unless that leaves nothing to evaluate or a target key looks like its
    misspelling: both are a ConfigError naming the keys.
    """
    for name, given in (("preds", preds), ("targets", targets)):
        if not isinstance(given, Mapping):
            raise ConfigError(
                f"evaluate takes one batch's dicts {{task: tensor}}; {name} is a {type(given).__name__}: "
                "for many batches use StreamingMetrics (update() per batch, then compute())"
            )
    known = set(task_registry.available())
    unknown = [k for k in preds if k not in known]
    if unknown:
        raise ConfigError(
            f"evaluate: prediction key(s) {unknown} are not registered tasks; valid: {', '.join(sorted(known))}"
        )
    missing = [k for k in preds if k not in targets]
    spare = [k for k in targets if k not in preds]
    for key in missing:
        close = difflib.get_close_matches(key, spare, n=1, cutoff=0.6)
        if close:
            raise ConfigError(f"evaluate: no target {key!r} for prediction {key!r}; did you mean {close[0]!r}?")
    if preds and len(missing) == len(preds):
        have = ", ".join(map(str, targets)) or "none"
        raise ConfigError(f"evaluate: no target for prediction key(s) {missing}; target keys: {have}")
    names = [t for t in preds if t in targets]
    m = StreamingMetrics(tasks.subset(names) if tasks is not None else names, num_classes)
    m.update(preds, targets)
    return m.compute()


def flatten(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"seg": {"miou": x}}`` → ``{"seg/miou": x}``."""
    return {f"{task}/{name}": float(v) for task, d in metrics.items() for name, v in d.items()}


def delta_m(metrics: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]]) -> float:
    """Δm% of Maninis et al. (CVPR 2019) of ``metrics`` against single-task ``baseline``:

        Δm = (1/K) Σ_k (−1)^{l_k} (M_k − B_k) / B_k · 100

    over the K metrics present in both (nested ``{task: {metric: value}}``), l_k = 1 when lower
    is better (as the task declares), so an improvement counts positive. Raises ConfigError when
    no metric is shared, when a shared metric has no known direction, or when a baseline value
    is 0.
    """
    terms: list[float] = []
    for task, ms in metrics.items():
        if task not in baseline:
            continue
        for name, value in ms.items():
            if name not in baseline[task]:
                continue
            key = f"{task}/{name}"
            if not in_delta_m(task, name):
                continue
            lower = lower_is_better(task, name)
            if lower is None:
                raise ConfigError(f"delta_m: unknown metric {key!r}, cannot tell whether lower is better")
            b = float(baseline[task][name])
            if b == 0.0:
                raise ConfigError(f"delta_m: baseline value of {key!r} is 0, relative change undefined")
            sign = -1.0 if lower else 1.0
            terms.append(sign * (float(value) - b) / b * 100.0)
    if not terms:
        raise ConfigError("delta_m: metrics and baseline share no metric")
    return math.fsum(terms) / len(terms)


def relative_improvement(metrics: Metrics, reference: Metrics) -> float:
    """Mean over shared metrics of the signed relative change vs ``reference``, in percent.

    Like :func:`delta_m`, but skips metrics that are NaN or whose reference is 0 (an untrained
    model's within-11.25° can be 0); NaN when nothing is left. The selection score of
    ``checkpoints/best.pt`` (against epoch 0) and of a bench's selected epoch.
    """
    terms: list[float] = []
    for task, ms in metrics.items():
        for name, value in ms.items():
            ref = reference.get(task, {}).get(name)
            lower = lower_is_better(task, name)  # the direction the task declares
            if ref is None or lower is None or value is None or ref == 0 or math.isnan(value) or math.isnan(ref):
                continue
            if not in_delta_m(task, name):
                continue
            terms.append((-1.0 if lower else 1.0) * (value - ref) / abs(ref) * 100.0)
    return math.fsum(terms) / len(terms) if terms else float("nan")


def best_score(history: list[dict[str, Any]], epochs: int) -> float | None:
    """The selection score of the last record of ``history`` if it is the best epoch so far, else
    None. The best epoch is the one >= 1 (epoch 0 in a run of no epochs) whose validation metrics
    improve most on epoch 0's (:func:`relative_improvement`, NaN never wins over
    a number); the rule a bench selects its checkpoint by."""
    epoch = history[-1]["epoch"]
    if epoch == 0 and epochs > 0:
        return None
    ref = history[0]["val"]
    scores = [relative_improvement(r["val"], ref) for r in history if r["epoch"] >= min(1, epoch)]
    score = scores[-1]
    earlier = [s for s in scores[:-1] if not math.isnan(s)]
    return score if not earlier or (not math.isnan(score) and score > max(earlier)) else None

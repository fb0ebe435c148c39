"""Loss, weight and metric curves of a run as PNG files.

- ``losses.png``: each task's mean training loss per epoch (log scale);
- ``weights.png``: each task's mean weight per epoch, only when a weight changes during the run
  (a method of constant weights, e.g. ``ew``, gets a note in ``losses.png`` instead);
- ``metrics.png``: one row per task, one panel per metric column of the task (no empty panels),
  the y axis naming the metric and its direction (↑ higher is better, ↓ lower), a marker at the
  selected epoch (the one ``checkpoints/best.pt`` holds) and a "no valid pixels" mark on a
  metric that never had a value.

With mutual learning (``--peer-arch``) every figure also draws each peer (dashed) and the
ensemble's metrics (dotted) beside the main network (solid).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from densemtl import tasks as task_registry  # noqa: E402
from densemtl.tasks import TaskSet, as_task_set  # noqa: E402

#: Line styles of the members: the main network, peers, the ensemble.
STYLES = {"main": "-", "peer": "--", "ensemble": ":"}


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def arrow(task: str, metric: str) -> str:
    """ " ↑" when higher is better, " ↓" when lower is, "" when the metric has no direction."""
    lower = task_registry.TASKS.get(task).lower_is_better.get(metric)  # as the class declares
    return "" if lower is None else (" ↓" if lower else " ↑")


def members(history: list[dict[str, Any]], field: str) -> list[tuple[str, str]]:
    """(record key, label) of every member's ``field`` in the records: the main network's
    ``field``, each peer's ``<name>_field`` (a peer is named by its ``<name>_train_loss``) and, for
    ``val``, the ensemble's ``ensemble_val``; the label is "" when the main network is alone."""
    present = {k for r in history for k, v in r.items() if isinstance(v, dict)}
    peers = sorted({k[: -len("_train_loss")] for k in present if k.endswith("_train_loss")})
    keys = [k for k in (field, *(f"{p}_{field}" for p in peers)) if k in present]
    if field == "val" and "ensemble_val" in present:
        keys.append("ensemble_val")
    many = len(keys) > 1
    return [(k, ("main network" if many else "") if k == field else k[: -len(field) - 1]) for k in keys]


def _style(label: str) -> str:
    return STYLES["main"] if label in ("", "main network") else STYLES.get(label, STYLES["peer"])


def selected_epoch(history: list[dict[str, Any]]) -> int | None:
    """The epoch whose checkpoint is ``best.pt`` (the rule of
    :func:`densemtl.metrics.best_score`), or None for an empty history."""
    from densemtl.metrics import best_score

    epochs = max((r["epoch"] for r in history), default=0)
    best = None
    for i in range(len(history)):
        if best_score(history[: i + 1], epochs) is not None:
            best = history[i]["epoch"]
    return best


def _constant(history: list[dict[str, Any]], keys: list[str], tasks: tuple[str, ...]) -> bool:
    """Whether every member's weight of every task is the same in every trained epoch."""
    for key in keys:
        for t in tasks:
            values = [r[key][t] for r in history if r.get(key)]
            if values and any(not math.isclose(v, values[0], rel_tol=1e-9, abs_tol=1e-12) for v in values):
                return False
    return True


def curves_figure(
    history: list[dict[str, Any]], tasks: tuple[str, ...], field: str, title: str, note: str = ""
) -> Figure:
    """Each task's ``field`` (``train_loss`` or ``weights``) per epoch, every member's; ``note``
    under the plot. The caller closes the figure."""
    trained = [r for r in history if r.get(field)]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, label in members(trained, field):
        rows = [r for r in trained if r.get(key)]
        for i, t in enumerate(tasks):
            name = f"{t} ({label})" if label and label != "main network" else t
            ax.plot(
                [r["epoch"] for r in rows],
                [_num(r[key][t]) for r in rows],
                _style(label),
                marker="o",
                markersize=3,
                color=f"C{i}",
                label=name,
            )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(title)
    ax.set_title(title + " per task (epoch mean)", fontsize=10)
    if field == "train_loss":
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    if note:
        fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=7, color="0.3", wrap=True)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically (a full disk leaves no partial file; a link at ``path`` is
    replaced, not followed) and close it."""
    from densemtl.paths import write_bytes

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


def plot_losses_and_weights(history: list[dict[str, Any]], tasks: tuple[str, ...], out: Path) -> list[Path]:
    """losses.png, and weights.png unless the weights stayed constant (then a note in losses.png)."""
    if not any(r.get("train_loss") for r in history):
        return []
    weight_keys = [k for k, _ in members(history, "weights")]
    constant = _constant(history, weight_keys, tasks)
    note = ""
    if constant:
        first = next(r["weights"] for r in history if r.get("weights"))
        values = ", ".join(f"{t} {first[t]:g}" for t in tasks)
        note = f"task weights constant over the run ({values}): weights.png not drawn"
    written = [save_figure(curves_figure(history, tasks, "train_loss", "training loss", note), out / "losses.png")]
    if not constant:
        written.append(save_figure(curves_figure(history, tasks, "weights", "task weight"), out / "weights.png"))
    return written


def _metric_panel(
    ax: Axes, history: list[dict[str, Any]], task: str, metric: str, colour: str, best: int | None
) -> bool:
    """Draw one metric's curves; False when no member ever had a value (marked on the panel)."""
    drawn = False
    for key, label in members(history, "val"):
        rows = [r for r in history if r.get(key) and task in r[key]]
        values = [_num(r[key][task].get(metric)) for r in rows]
        if all(math.isnan(v) for v in values):
            continue
        drawn = True
        epochs = [r["epoch"] for r in rows]
        ax.plot(epochs, values, _style(label), marker="o", markersize=3, color=colour, label=label or None)
        if best is not None and best in epochs and label in ("", "main network"):
            ax.plot([best], [values[epochs.index(best)]], marker="*", markersize=10, color="gold", mec="k", mew=0.5)
    if best is not None:
        ax.axvline(best, color="0.55", linestyle=(0, (2, 2)), linewidth=0.9)
    if not drawn:
        ax.text(0.5, 0.5, "no valid pixels\nin any epoch", transform=ax.transAxes, ha="center", va="center", fontsize=8)
    return drawn


def metrics_figure(history: list[dict[str, Any]], tasks: TaskSet | tuple[str, ...]) -> Figure:
    """metrics.png's figure (see the module doc): 2.2 inches per task row, 2.4 per panel of the
    widest row; ``tasks`` the run's TaskSet (or names: their defaults). The caller closes it."""
    columns = {t: task.table_columns() for t, task in as_task_set(tasks).items()}
    ncols = max(len(c) for c in columns.values())
    best = selected_epoch(history)
    fig = plt.figure(figsize=(2.4 * ncols, 2.2 * len(tasks)), layout="constrained")
    subfigs = fig.subfigures(len(tasks), 1, squeeze=False)[:, 0]
    for row, (t, sub) in enumerate(zip(tasks, subfigs, strict=True)):
        axes = sub.subplots(1, len(columns[t]), squeeze=False)[0]
        for ax, column in zip(axes, columns[t], strict=True):
            _metric_panel(ax, history, t, column.metric, f"C{row}", best)
            ax.set_ylabel(f"{column.label}{arrow(t, column.metric)}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("epoch", fontsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        sub.suptitle(t, fontsize=9, fontweight="bold")
    handles = [
        Line2D([], [], color="0.3", linestyle=_style(label), label=label) for _, label in members(history, "val")
    ]
    handles = [h for h in handles if h.get_label()]
    if best is not None:
        handles.append(
            Line2D(
                [],
                [],
                color="0.55",
                linestyle=(0, (2, 2)),
                marker="*",
                mfc="gold",
                mec="k",
                label=f"selected epoch {best}",
            )
        )
    fig.suptitle("validation metrics (epoch 0 = before training; ↑ higher is better, ↓ lower)", fontsize=10)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)
    return fig


def plot_run(history: list[dict[str, Any]], tasks: TaskSet | tuple[str, ...], out: Path) -> list[Path]:
    """Write losses.png, weights.png (unless constant) and metrics.png from metrics.jsonl records;
    return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = save_figure(metrics_figure(history, tasks), out / "metrics.png")
    return [*plot_losses_and_weights(history, tuple(tasks), out), metrics]

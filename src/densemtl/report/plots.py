"""Loss, weight and metric curves of a run as PNG files (one metric panel per task column)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from densemtl import tasks as task_registry  # noqa: E402


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def plot_run(history: list[dict[str, Any]], tasks: tuple[str, ...], out: Path) -> list[Path]:
    """Write losses.png, weights.png and metrics.png from metrics.jsonl records; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    trained = [r for r in history if r.get("train_loss")]
    for key, title, fname in (
        ("train_loss", "training loss per task", "losses.png"),
        ("weights", "task weight (epoch mean)", "weights.png"),
    ):
        if not trained:
            break
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for t in tasks:
            ax.plot([r["epoch"] for r in trained], [r[key][t] for r in trained], marker="o", label=t)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if key == "train_loss":
            ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
        written.append(out / fname)
    columns = {t: task_registry.get(t).table_columns() for t in tasks}
    ncols = max(len(c) for c in columns.values())
    fig, axes = plt.subplots(len(tasks), ncols, figsize=(2.4 * ncols, 2.2 * len(tasks)), squeeze=False)
    epochs = [r["epoch"] for r in history]
    for row, t in enumerate(tasks):
        for col in range(ncols):
            ax = axes[row, col]
            if col >= len(columns[t]):
                ax.axis("off")
                continue
            column = columns[t][col]
            values = [_num(r["val"][t][column.metric]) for r in history]
            ax.plot(epochs, values, marker="o", markersize=3, color=f"C{row}")
            ax.set_title(f"{t} {column.label}", fontsize=9)
            ax.tick_params(labelsize=7)
            if row == len(tasks) - 1:
                ax.set_xlabel("epoch", fontsize=8)
    fig.suptitle("validation metrics (epoch 0 = before training)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=100)
    plt.close(fig)
    written.append(out / "metrics.png")
    return written

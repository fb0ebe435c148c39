"""Loss, weight and metric curves of a run as PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from densemtl.report.console import COLUMNS  # noqa: E402


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
    ncols = sum(len(COLUMNS[t]) for t in tasks)
    fig, axes = plt.subplots(1, ncols, figsize=(2.6 * ncols, 2.8), squeeze=False)
    epochs = [r["epoch"] for r in history]
    i = 0
    for t in tasks:
        for key, label, _ in COLUMNS[t]:
            ax = axes[0, i]
            ax.plot(epochs, [r["val"][t][key] for r in history], marker="o", color=f"C{tasks.index(t)}")
            ax.set_title(f"{t} {label}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
            i += 1
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=100)
    plt.close(fig)
    written.append(out / "metrics.png")
    return written

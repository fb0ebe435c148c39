"""Plots of the training diagnostics: task-gradient cosines over epochs, per-block balance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_diagnostics(history: list[dict[str, Any]], tasks: tuple[str, ...], out: Path) -> list[Path]:
    """Write grad_cosine.png and layer_balance.png from metrics records that carry them; return the paths."""
    sampled = [r for r in history if r.get("grad_cosine")]
    if not sampled:
        return []
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for pair in sampled[-1]["grad_cosine"]:
        ax.plot(
            [r["epoch"] for r in sampled], [r["grad_cosine"].get(pair, np.nan) for r in sampled], marker="o", label=pair
        )
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("epoch")
    ax.set_title("cosine of task gradients (shared parameters)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "grad_cosine.png", dpi=100)
    plt.close(fig)
    written.append(out / "grad_cosine.png")

    last = next((r for r in reversed(sampled) if r.get("layer_balance")), None)
    if last is not None:
        balance: dict[str, dict[str, float]] = last["layer_balance"]
        blocks = list(balance)
        data = np.array([[balance[b].get(t, np.nan) for t in tasks] for b in blocks])
        fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(tasks), 1.2 + 0.28 * len(blocks)))
        im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_yticks(range(len(blocks)), blocks, fontsize=7)
        if len(blocks) * len(tasks) <= 120:
            for (i, j), v in np.ndenumerate(data):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
        ax.set_title(f"share of gradient norm per block (epoch {last['epoch']})", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
        fig.tight_layout()
        fig.savefig(out / "layer_balance.png", dpi=100)
        plt.close(fig)
        written.append(out / "layer_balance.png")
    return written

"""Plots of the training diagnostics (``--diagnostics-every``).

- ``grad_cosine.png``: the cosine of each pair of task gradients (shared parameters) per epoch;
- ``layer_balance.png``: per task, a heatmap of epochs (columns) × blocks of the shared network
  (rows) of the task's share of the block's gradient norm, coloured around the fair share 1/T
  (red: the task takes more than its share of that block, blue: less).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from densemtl.report.plots import save_figure  # noqa: E402


def plot_grad_cosine(sampled: list[dict[str, Any]], path: Path) -> None:
    """grad_cosine.png from the records that carry ``grad_cosine``."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for pair in sampled[-1]["grad_cosine"]:
        ax.plot(
            [r["epoch"] for r in sampled],
            [r["grad_cosine"].get(pair, np.nan) for r in sampled],
            marker="o",
            label=pair.replace("|", " · "),
        )
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cosine (> 0 agree, < 0 conflict)")
    ax.set_title("cosine of task gradients (shared parameters, epoch mean)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def balance_table(records: list[dict[str, Any]], tasks: tuple[str, ...]) -> tuple[list[int], list[str], np.ndarray]:
    """(epochs, blocks, shares) with shares[t, b, e] the share of task t in block b at epoch e
    (NaN where a block was not measured that epoch); blocks in the order first seen."""
    epochs = [int(r["epoch"]) for r in records]
    blocks: list[str] = []
    for r in records:
        blocks += [b for b in r["layer_balance"] if b not in blocks]
    data = np.full((len(tasks), len(blocks), len(epochs)), np.nan)
    for e, r in enumerate(records):
        for b, block in enumerate(blocks):
            shares = r["layer_balance"].get(block)
            if shares:
                for t, task in enumerate(tasks):
                    data[t, b, e] = shares.get(task, np.nan)
    return epochs, blocks, data


def layer_balance_figure(records: list[dict[str, Any]], tasks: tuple[str, ...]) -> Figure:
    """layer_balance.png's figure (see the module doc) from the records that carry
    ``layer_balance``. The caller closes it."""
    epochs, blocks, data = balance_table(records, tasks)
    fair = 1.0 / len(tasks)
    norm = TwoSlopeNorm(vmin=0.0, vcenter=fair, vmax=1.0)
    width = 1.8 + len(tasks) * (1.2 + 0.22 * len(epochs))
    height = 1.6 + 0.26 * len(blocks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(width, height), sharey=True, squeeze=False, layout="constrained")
    image = None
    annotate = len(blocks) * len(epochs) <= 80
    for t, (task, ax) in enumerate(zip(tasks, axes[0], strict=True)):
        image = ax.imshow(data[t], aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_title(task, fontsize=9)
        ax.set_xticks(range(len(epochs)), [str(e) for e in epochs], fontsize=7)
        ax.set_xlabel("epoch", fontsize=8)
        if len(epochs) > 12:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        if annotate:
            for (b, e), v in np.ndenumerate(data[t]):
                if not np.isnan(v):
                    ax.text(e, b, f"{v:.2f}", ha="center", va="center", fontsize=6)
    axes[0, 0].set_yticks(range(len(blocks)), blocks, fontsize=7)
    axes[0, 0].set_ylabel("block of the shared network", fontsize=8)
    cb = fig.colorbar(image, ax=axes[0].tolist(), fraction=0.04)
    cb.set_label(f"share of the block's gradient norm (fair share 1/{len(tasks)} = {fair:.2f})", fontsize=7)
    cb.ax.tick_params(labelsize=7)
    fig.suptitle("each task's share of the gradient norm per block, by epoch", fontsize=10)
    return fig


def plot_diagnostics(history: list[dict[str, Any]], tasks: tuple[str, ...], out: Path) -> list[Path]:
    """Write grad_cosine.png and layer_balance.png from metrics records that carry them; return the paths."""
    sampled = [r for r in history if r.get("grad_cosine")]
    if not sampled:
        return []
    out.mkdir(parents=True, exist_ok=True)
    plot_grad_cosine(sampled, out / "grad_cosine.png")
    written = [out / "grad_cosine.png"]
    balanced = [r for r in sampled if r.get("layer_balance")]
    if balanced:
        save_figure(layer_balance_figure(balanced, tasks), out / "layer_balance.png")
        written.append(out / "layer_balance.png")
    return written

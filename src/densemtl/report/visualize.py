"""Prediction images.

- :func:`prediction_panel`: one image's raw panel, the input then one tile per task coloured by
  the task, side by side at the prediction's size (``densemtl predict``).
- :func:`prediction_figure` / :func:`prediction_grid`: the run's ``plots/predictions.png``: for a
  few validation samples a prediction row over a ground-truth row, with column titles (input,
  each task), row labels, a class legend under each label column (segmentation, parts), a colour
  bar in the task's unit (depth in metres, probabilities) and a "no valid pixels" mark on a
  ground-truth tile that has nothing to show. What explains a task's colours comes from
  :func:`densemtl.report.task_views.legend`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from densemtl.report.task_views import Classes, ColourBar, Legend, legend  # noqa: E402
from densemtl.tasks import TaskSet, as_task_set  # noqa: E402
from densemtl.tasks.base import Task  # noqa: E402

#: The most classes a legend under a column names (the lowest ids shown; the rest are counted).
MAX_LEGEND_ENTRIES = 24


def _image_tile(image: Tensor) -> np.ndarray:
    return (image.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _join(tiles: Sequence[np.ndarray]) -> np.ndarray:
    """Tiles side by side with 2-pixel white separators."""
    sep = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for tile in tiles:
        parts += [tile, sep]
    return np.concatenate(parts[:-1], axis=1)


def prediction_panel(
    image: Tensor,
    preds: Mapping[str, Tensor],
    num_classes: int,
    targets: Mapping[str, Tensor] | None = None,
    tasks: TaskSet | None = None,
) -> np.ndarray:
    """One sample's panel (H, W*(1+tasks), 3): the input, then each task's prediction (no batch
    dimension) in the order of ``preds``, coloured by the task (of ``tasks``, the run's TaskSet;
    default: the tasks' defaults); ``targets`` (the sample's ground truth, optional) lets a task
    colour on the ground truth's range."""
    targets = targets or {}
    views = tasks if tasks is not None else as_task_set(preds)
    tiles = [_image_tile(image)]
    for t, pred in preds.items():
        tiles.append(views[t].colour(pred, num_classes, targets.get(t)))
    return _join(tiles)


def save_panel(panel: np.ndarray, path: Path) -> None:
    """Write a panel or grid as a PNG, creating the folder; atomically (a full disk leaves no
    partial file and is one line naming ``path``)."""
    from densemtl.paths import write_bytes

    buf = io.BytesIO()
    Image.fromarray(panel).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


@dataclass
class Sample:
    """One row pair of the figure: the input (3, H, W), each task's prediction (C, H, W) and the
    ground truth the sample has (no batch dimension)."""

    image: Tensor
    preds: dict[str, Tensor]
    targets: dict[str, Tensor]


def _blank(ax: Axes) -> None:
    """No ticks or frame, but keep the y label (``axis("off")`` would hide it)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _mark(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="white", fontsize=8)


def _has_valid(task: Task, target: Tensor) -> bool:
    return bool(task.valid(target).any())


def _column_legend(ax: Axes, found: list[Legend]) -> None:
    """Under the column's last tile: the union of the classes shown, the colour bar every sample
    shares, or a caption (a task's view is of one kind)."""
    first = found[0]
    if isinstance(first, Classes):
        classes = [g for g in found if isinstance(g, Classes)]
        ids = sorted(i for i in set().union(*(g.ids for g in classes)) if i < len(first.names))
        handles = [Patch(color=first.colours[i] / 255.0, label=first.names[i]) for i in ids[:MAX_LEGEND_ENTRIES]]
        if len(ids) > MAX_LEGEND_ENTRIES:
            handles.append(Patch(color="white", label=f"… {len(ids) - MAX_LEGEND_ENTRIES} more"))
        if any(g.ignored for g in classes):
            handles.append(Patch(color="black", label="ignored"))
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.04),
            ncol=2 if len(handles) > 6 else 1,
            fontsize=6,
            frameon=False,
            handlelength=1.0,
            columnspacing=0.8,
        )
    elif isinstance(first, ColourBar):
        _colour_bar(ax.inset_axes((0.05, -0.16, 0.9, 0.07)), first, "horizontal")
    else:
        ax.text(0.5, -0.06, first.text, transform=ax.transAxes, ha="center", va="top", fontsize=6, wrap=True)


def _colour_bar(cax: Axes, bar: ColourBar, orientation: str) -> None:
    mappable = ScalarMappable(norm=Normalize(bar.vmin, bar.vmax), cmap=bar.cmap)
    cb = cax.figure.colorbar(mappable, cax=cax, orientation=orientation)
    cb.set_label(bar.label, fontsize=6)
    cb.ax.tick_params(labelsize=6)


def _per_sample_bars(found: list[Legend | None]) -> bool:
    """Whether a column's colour bars differ between samples (then each pair gets its own)."""
    bars = [g for g in found if isinstance(g, ColourBar)]
    return bool(bars) and any(g != bars[0] for g in found)


def prediction_figure(
    samples: Sequence[Sample],
    num_classes: int,
    *,
    class_names: Sequence[str] = (),
    tasks: TaskSet | None = None,
) -> Figure:
    """The labelled grid of ``samples`` (see the module doc); tasks in the order of the first
    sample's predictions, coloured as ``tasks`` (the run's TaskSet; default: the tasks' defaults)
    say. The caller closes the figure."""
    views = tasks if tasks is not None else as_task_set(samples[0].preds)
    names = list(samples[0].preds)
    legends = {
        t: [legend(views[t], s.preds[t], s.targets.get(t), num_classes, class_names) for s in samples] for t in names
    }
    bar_after = {t for t in names if _per_sample_bars(legends[t])}
    # columns: the input, each task (and a narrow colour-bar column after a task whose scale varies)
    widths = [1.0]
    column: dict[str, int] = {}
    for t in names:
        column[t] = len(widths)
        widths += [1.0, 0.07, 0.28] if t in bar_after else [1.0]
    # rows: per sample a prediction and a ground truth, a gap between samples
    heights: list[float] = []
    for i in range(len(samples)):
        heights += [1.0, 1.0] if i == 0 else [0.12, 1.0, 1.0]
    h, w = samples[0].image.shape[-2:]
    tile = 1.7
    grid_w = tile * sum(widths) * 1.08
    grid_h = tile * h / w * sum(heights) * 1.05
    classes = any(isinstance(g, Classes) for found in legends.values() for g in found)
    left, right, top, bottom = 0.6, 0.15, 0.3, 1.6 if classes else 0.7  # inches around the tiles
    fig = plt.figure(figsize=(left + grid_w + right, top + grid_h + bottom))
    fig_w, fig_h = fig.get_size_inches()
    grid = fig.add_gridspec(
        len(heights),
        len(widths),
        width_ratios=widths,
        height_ratios=heights,
        wspace=0.06,
        hspace=0.04,
        left=left / fig_w,
        right=1 - right / fig_w,
        top=1 - top / fig_h,
        bottom=bottom / fig_h,
    )
    last_true: dict[int, Axes] = {}
    for i, s in enumerate(samples):
        r = 3 * i
        for j, t in [(0, None), *((column[t], t) for t in names)]:
            pred_ax, true_ax = fig.add_subplot(grid[r, j]), fig.add_subplot(grid[r + 1, j])
            for ax in (pred_ax, true_ax):
                _blank(ax)
            last_true[j] = true_ax
            if i == 0:
                pred_ax.set_title("input" if t is None else t, fontsize=9)
            if t is None:
                pred_ax.imshow(_image_tile(s.image), interpolation="nearest")
                true_ax.imshow(_image_tile(s.image), interpolation="nearest")
                pred_ax.set_ylabel(f"sample {i + 1}\nprediction", fontsize=8)
                true_ax.set_ylabel("ground truth", fontsize=8)
                continue
            task, pred, target = views[t], s.preds[t], s.targets.get(t)
            pred_ax.imshow(task.colour(pred, num_classes, target), interpolation="nearest")
            if target is None:
                true_ax.imshow(np.zeros((h, w, 3), np.uint8))
                _mark(true_ax, "no ground truth")
            else:
                true_ax.imshow(task.colour_target(target, num_classes), interpolation="nearest")
                if not _has_valid(task, target):
                    _mark(true_ax, "no valid pixels")
            bar = legends[t][i]
            if t in bar_after and isinstance(bar, ColourBar):
                _colour_bar(fig.add_subplot(grid[r : r + 2, column[t] + 1]), bar, "vertical")
    for t in names:
        found = [g for g in legends[t] if g is not None]
        if found and t not in bar_after:
            _column_legend(last_true[column[t]], found)
    return fig


def render(fig: Figure, dpi: int = 100, margin: int = 6) -> np.ndarray:
    """The figure as an (H, W, 3) uint8 array, cropped to what is drawn plus ``margin`` pixels
    (one draw, unlike ``bbox_inches="tight"``; whatever lies outside the figure is lost, so the
    figure leaves room for its legends)."""
    fig.set_dpi(dpi)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    ink = np.argwhere((rgb < 250).any(axis=-1))
    if ink.size == 0:
        return rgb.copy()
    (y0, x0), (y1, x1) = ink.min(axis=0), ink.max(axis=0)
    return rgb[max(y0 - margin, 0) : y1 + margin + 1, max(x0 - margin, 0) : x1 + margin + 1].copy()


@torch.no_grad()
def grid_samples(model: nn.Module, dataset: Dataset, n: int = 4) -> list[Sample]:
    """The first ``n`` samples of ``dataset`` with ``model``'s predictions (in eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[Sample] = []
    try:
        for i in range(min(n, len(dataset))):  # type: ignore[arg-type]
            sample = dataset[i]
            preds = {t: v[0].float().cpu() for t, v in model(sample["image"][None].to(device)).items()}
            targets = {t: sample[t] for t in preds if t in sample}
            out.append(Sample(sample["image"], preds, targets))
    finally:
        model.train(was_training)
    return out


def prediction_grid(
    model: nn.Module, dataset: Dataset, num_classes: int, n: int = 4, *, tasks: TaskSet | None = None
) -> np.ndarray:
    """:func:`prediction_figure` of the first ``n`` samples of ``dataset``, as an RGB array;
    ``tasks`` the run's TaskSet (default: the model's tasks with ``dataset``'s ``task_args``)."""
    samples = grid_samples(model, dataset, n)
    if tasks is None:
        tasks = TaskSet(samples[0].preds, defaults=getattr(dataset, "task_args", None))
    fig = prediction_figure(samples, num_classes, class_names=tuple(getattr(dataset, "class_names", ())), tasks=tasks)
    try:
        return render(fig)
    finally:
        plt.close(fig)

"""Evaluation metrics of the dense tasks and the multi-task performance Δm%.

Segmentation (labels y, predictions ŷ, pixels with y = -1 ignored), from the confusion matrix
N (rows: true class, columns: predicted class) summed over every pixel of the split:

    TP_c = N_cc,  FP_c = Σ_i N_ic − N_cc,  FN_c = Σ_j N_cj − N_cc
    IoU_c = TP_c / (TP_c + FP_c + FN_c),   mIoU = mean of IoU_c over classes with TP+FP+FN > 0
    pix_acc = Σ_c TP_c / Σ_ij N_ij

Depth (valid pixels V of the whole split, see :func:`densemtl.tasks.depth_valid`):

    abs_err = (1/|V|) Σ_{p∈V} |d̂_p − d_p|,   rel_err = (1/|V|) Σ_{p∈V} |d̂_p − d_p| / d_p

These are pixel-weighted over the split. MTAN and LibMTL instead average per-batch means (so
the result depends on the batch size and on how many valid pixels each batch has); we do not.

Normals (valid pixels V, see :func:`densemtl.tasks.normal_valid`), with n̂ and n normalised:

    θ_p = (180/π) · arccos(clamp(n̂_p · n_p, −1, 1))
    mean = mean θ,  median = median θ,  within_a = |{p : θ_p < a}| / |V| for a ∈ {11.25, 22.5, 30}

(fractions in [0, 1], not percents). Everything is accumulated in float64; the confusion matrix
in int64. :class:`StreamingMetrics` gives the same numbers batch by batch as :func:`evaluate`
on the whole split: both call the same helpers, and the normal angles are kept (as cosines) so
that the median is exact. A metric with no valid pixel is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from densemtl.errors import ConfigError
from densemtl.tasks import TASKS, depth_valid, normal_valid

Metrics = dict[str, dict[str, float]]

#: For every metric of every task: is a lower value better?
LOWER_IS_BETTER: dict[str, dict[str, bool]] = {
    "seg": {"miou": False, "pix_acc": False},
    "depth": {"abs_err": True, "rel_err": True},
    "normal": {"mean": True, "median": True, "within_11.25": False, "within_22.5": False, "within_30": False},
}

#: The one metric per task that tables and model selection use.
PRIMARY: dict[str, str] = {"seg": "miou", "depth": "abs_err", "normal": "mean"}

NORMAL_THRESHOLDS: tuple[float, ...] = (11.25, 22.5, 30.0)

_NAN = float("nan")


# ----------------------------------------------------------------------------- shared helpers
def _check_shape(task: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{task}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )


def seg_confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix N (C,C) int64 of one batch: N[i, j] = #pixels of true class i predicted j.

    ``pred`` is logits (B,C,H,W) (argmaxed over C) or labels (B,H,W); ``target`` (B,H,W) with -1
    ignored.
    """
    if pred.dim() == target.dim() + 1:
        if pred.shape[1] != num_classes:
            raise ValueError(f"seg: logits have {pred.shape[1]} channels, expected num_classes={num_classes}")
        labels = pred.argmax(dim=1)
    else:
        labels = pred
    _check_shape("seg", labels, target)
    labels = labels.long()
    target = target.long()
    valid = target >= 0
    t = target[valid]
    p = labels[valid]
    if t.numel() and int(t.max()) >= num_classes:
        raise ValueError(f"seg: target label {int(t.max())} >= num_classes={num_classes}")
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(f"seg: predicted labels must lie in [0, {num_classes})")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).to(torch.int64).cpu()


def seg_from_confusion(conf: Tensor) -> dict[str, float]:
    """mIoU (over classes with TP+FP+FN > 0) and pixel accuracy from a confusion matrix."""
    conf = conf.to(torch.float64)
    tp = conf.diagonal()
    denom = conf.sum(dim=0) + conf.sum(dim=1) - tp  # TP + FP + FN
    present = denom > 0
    total = conf.sum()
    miou = (tp[present] / denom[present]).mean().item() if present.any() else _NAN
    pix_acc = (tp.sum() / total).item() if total > 0 else _NAN
    return {"miou": miou, "pix_acc": pix_acc}


def depth_sums(pred: Tensor, target: Tensor) -> tuple[float, float, int]:
    """(Σ|d̂−d|, Σ|d̂−d|/d, |V|) over the valid pixels of one batch, in float64."""
    _check_shape("depth", pred, target)
    mask = depth_valid(target)
    t = target[mask].to(torch.float64)
    err = (pred[mask].to(torch.float64) - t).abs()
    return err.sum().item(), (err / t).sum().item(), int(mask.sum())


def depth_from_sums(abs_sum: float, rel_sum: float, count: int) -> dict[str, float]:
    """abs_err = Σ|d̂−d| / |V| and rel_err = Σ(|d̂−d|/d) / |V|."""
    if count == 0:
        return {"abs_err": _NAN, "rel_err": _NAN}
    return {"abs_err": abs_sum / count, "rel_err": rel_sum / count}


def normal_cosines(pred: Tensor, target: Tensor) -> Tensor:
    """cos θ (1-D float64, CPU) between normalised prediction and target at the valid pixels.

    Pixels are taken in (B,H,W) order and the cosine is computed with element-wise operations
    only, so the value of a pixel does not depend on the batch it came in.
    """
    _check_shape("normal", pred, target)
    mask = normal_valid(target)
    p = pred.permute(0, 2, 3, 1)[mask].to(torch.float64)  # (N,3)
    t = target.permute(0, 2, 3, 1)[mask].to(torch.float64)
    p0, p1, p2 = p[:, 0], p[:, 1], p[:, 2]
    t0, t1, t2 = t[:, 0], t[:, 1], t[:, 2]
    dot = p0 * t0 + p1 * t1 + p2 * t2
    p_norm = torch.sqrt(p0 * p0 + p1 * p1 + p2 * p2).clamp_min(1e-12)
    t_norm = torch.sqrt(t0 * t0 + t1 * t1 + t2 * t2)
    return (dot / (p_norm * t_norm)).clamp(-1.0, 1.0).cpu()


def normal_from_cosines(cos: Tensor) -> dict[str, float]:
    """Mean, median and fractions within 11.25°/22.5°/30° of θ = degrees(arccos(cos))."""
    keys = ["mean", "median", *(f"within_{a:g}" for a in NORMAL_THRESHOLDS)]
    if cos.numel() == 0:
        return dict.fromkeys(keys, _NAN)
    angles = torch.rad2deg(torch.acos(cos.to(torch.float64)))
    n = angles.numel()
    # Exact median: the mean of the two middle values when n is even (torch.median takes the lower).
    srt = angles.sort().values
    median = srt[n // 2].item() if n % 2 else 0.5 * (srt[n // 2 - 1].item() + srt[n // 2].item())
    out = {"mean": angles.sum().item() / n, "median": median}
    for a in NORMAL_THRESHOLDS:
        out[f"within_{a:g}"] = int((angles < a).sum()) / n
    return out


# ----------------------------------------------------------------------------- public API
class StreamingMetrics:
    """Accumulates the metrics of ``tasks`` batch by batch; :meth:`compute` equals
    :func:`evaluate` on the concatenated batches (seg and normals exactly, depth to float64
    rounding of the summation order).

    State: confusion matrix (int64), depth sums (float64) and counts, and one 1-D float64
    tensor of valid-pixel normal cosines per batch (a NYUv2 val split is ~70M pixels, ~0.6 GB).
    """

    def __init__(self, tasks: Iterable[str], num_classes: int) -> None:
        self.tasks = tuple(tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"unknown task(s) {unknown}; known: {list(TASKS)}")
        if "seg" in self.tasks and num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1 for seg, got {num_classes}")
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._conf = torch.zeros(max(self.num_classes, 0), max(self.num_classes, 0), dtype=torch.int64)
        self._abs_sum = 0.0
        self._rel_sum = 0.0
        self._depth_count = 0
        self._cos: list[Tensor] = []

    @torch.no_grad()
    def update(self, preds: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        """Add one batch; every task of ``self.tasks`` must be in both dicts."""
        for t in self.tasks:
            if t not in preds or t not in targets:
                raise KeyError(f"task {t!r} missing from {'predictions' if t not in preds else 'targets'}")
            pred, target = preds[t].detach(), targets[t].detach()
            if t == "seg":
                self._conf += seg_confusion(pred, target, self.num_classes)
            elif t == "depth":
                a, r, n = depth_sums(pred, target)
                self._abs_sum += a
                self._rel_sum += r
                self._depth_count += n
            else:
                self._cos.append(normal_cosines(pred, target))

    def compute(self) -> Metrics:
        """``{task: {metric: float}}`` over every batch since the last :meth:`reset`."""
        out: Metrics = {}
        for t in self.tasks:
            if t == "seg":
                out[t] = seg_from_confusion(self._conf)
            elif t == "depth":
                out[t] = depth_from_sums(self._abs_sum, self._rel_sum, self._depth_count)
            else:
                cos = torch.cat(self._cos) if self._cos else torch.zeros(0, dtype=torch.float64)
                out[t] = normal_from_cosines(cos)
        return out


def evaluate(preds: Mapping[str, Tensor], targets: Mapping[str, Tensor], num_classes: int) -> Metrics:
    """Metrics of every task present in both ``preds`` and ``targets`` (see the module docstring).

    Depth errors are pixel-weighted over all valid pixels given (MTAN/LibMTL average per-batch
    means instead; we do not).
    """
    tasks = [t for t in TASKS if t in preds and t in targets]
    m = StreamingMetrics(tasks, num_classes)
    m.update(preds, targets)
    return m.compute()


def flatten(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"seg": {"miou": x}}`` → ``{"seg/miou": x}``."""
    return {f"{task}/{name}": float(v) for task, d in metrics.items() for name, v in d.items()}


def delta_m(metrics: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]]) -> float:
    """Δm% of Maninis et al. (CVPR 2019) of ``metrics`` against single-task ``baseline``:

        Δm = (1/K) Σ_k (−1)^{l_k} (M_k − B_k) / B_k · 100

    over the K metrics present in both (nested ``{task: {metric: value}}``), l_k = 1 when lower
    is better, so an improvement counts positive. Raises ConfigError when no metric is shared,
    when a shared metric has no known direction, or when a baseline value is 0.
    """
    terms: list[float] = []
    for task, ms in metrics.items():
        if task not in baseline:
            continue
        for name, value in ms.items():
            if name not in baseline[task]:
                continue
            key = f"{task}/{name}"
            lower = LOWER_IS_BETTER.get(task, {}).get(name)
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

"""Metrics: hand-worked cases, streaming == whole-split evaluation, Δm%."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from densemtl import tasks
from densemtl.errors import ConfigError
from densemtl.metrics import (
    StreamingMetrics,
    delta_m,
    evaluate,
    flatten,
    lower_is_better,
    primary_metric,
)

# --------------------------------------------------------------------------- segmentation
# target (2x3), -1 ignored; 4 classes, class 3 in neither target nor prediction:
#   target = [[0, 0, 1],      pred = [[0, 1, 1],
#             [1, 2, -1]]             [2, 2, 0]]
# valid (true, pred) pairs: (0,0) (0,1) (1,1) (1,2) (2,2); the ignored pixel (pred 0) is dropped.
# confusion N[true, pred]:   row0 = [1 1 0 0], row1 = [0 1 1 0], row2 = [0 0 1 0], row3 = 0
# TP = [1 1 1 0], col sums (TP+FP) = [1 2 2 0], row sums (TP+FN) = [2 2 1 0]
# TP+FP+FN = [2 3 2 0] -> IoU = [1/2, 1/3, 1/2], class 3 excluded
# mIoU = (1/2 + 1/3 + 1/2) / 3 = 4/9;  pix_acc = 3 / 5
SEG_T = torch.tensor([[[0, 0, 1], [1, 2, -1]]])
SEG_P = torch.tensor([[[0, 1, 1], [2, 2, 0]]])


def _logits(labels: Tensor, num_classes: int, seed: int = 0) -> Tensor:
    """Logits whose argmax is ``labels`` (B,H,W) -> (B,C,H,W)."""
    g = torch.Generator().manual_seed(seed)
    one_hot = torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()
    return 5.0 * one_hot + torch.rand(one_hot.shape, generator=g)


def test_seg_hand_computed() -> None:
    m = evaluate({"seg": SEG_P}, {"seg": SEG_T}, num_classes=4)["seg"]
    assert m["miou"] == pytest.approx(4 / 9, abs=1e-15)
    assert m["pix_acc"] == pytest.approx(3 / 5, abs=1e-15)


def test_seg_labels_equal_logits() -> None:
    from_labels = evaluate({"seg": SEG_P}, {"seg": SEG_T}, num_classes=4)
    from_logits = evaluate({"seg": _logits(SEG_P, 4)}, {"seg": SEG_T}, num_classes=4)
    assert from_labels == from_logits


def test_seg_bad_inputs() -> None:
    with pytest.raises(ValueError, match="channels"):
        evaluate({"seg": _logits(SEG_P, 4)}, {"seg": SEG_T}, num_classes=5)
    with pytest.raises(ValueError, match="num_classes"):
        evaluate({"seg": SEG_P}, {"seg": SEG_T}, num_classes=2)


# --------------------------------------------------------------------------- depth
# target [[2, 0], [4, 1]] (0 invalid), pred [[3, 5], [2, 1.5]]
# valid errors |p-t| = 1, 2, 0.5 -> abs_err = 3.5 / 3;  |p-t|/t = 1/2, 2/4, 0.5/1 -> rel_err = 0.5
def test_depth_hand_computed() -> None:
    t = torch.tensor([[2.0, 0.0], [4.0, 1.0]]).view(1, 1, 2, 2)
    p = torch.tensor([[3.0, 5.0], [2.0, 1.5]]).view(1, 1, 2, 2)
    m = evaluate({"depth": p}, {"depth": t}, num_classes=0)["depth"]
    assert m["abs_err"] == pytest.approx(3.5 / 3, abs=1e-15)
    assert m["rel_err"] == pytest.approx(0.5, abs=1e-15)


def test_depth_is_pixel_weighted_not_batch_mean() -> None:
    # batch 1: one valid pixel, error 1; batch 2: three valid pixels, error 0 each.
    # pixel-weighted: 1/4 (a mean of batch means would give 1/2).
    m = StreamingMetrics(["depth"], num_classes=0)
    m.update(
        {"depth": torch.tensor([2.0, 0, 0, 0]).view(1, 1, 2, 2)},
        {"depth": torch.tensor([1.0, 0, 0, 0]).view(1, 1, 2, 2)},
    )
    m.update({"depth": torch.ones(1, 1, 2, 2)}, {"depth": torch.tensor([1.0, 1, 1, 0]).view(1, 1, 2, 2)})
    assert m.compute()["depth"]["abs_err"] == 0.25


# --------------------------------------------------------------------------- normals
def _unit(deg: float) -> list[float]:
    """A normal at ``deg`` degrees from +z, in the x-z plane, scaled by 3 (metrics normalise)."""
    r = math.radians(deg)
    return [3.0 * math.sin(r), 0.0, 3.0 * math.cos(r)]


def test_normal_hand_computed() -> None:
    # 5 pixels, target +z everywhere but pixel 4 (all zero = invalid).
    # angles 0, 90, 30, 180 (+ invalid): mean = 300/4 = 75; median of {0,30,90,180} = (30+90)/2 = 60
    # within 11.25: {0} -> 1/4; within 22.5: {0} -> 1/4
    pred = torch.tensor([_unit(0), _unit(90), _unit(30), _unit(180), _unit(45)]).T.reshape(1, 3, 1, 5)
    tgt = torch.tensor([[0.0, 0.0, 1.0]] * 4 + [[0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 5)
    m = evaluate({"normal": pred}, {"normal": tgt}, num_classes=0)["normal"]
    assert m["mean"] == pytest.approx(75.0, abs=1e-4)
    assert m["median"] == pytest.approx(60.0, abs=1e-4)
    assert m["within_11.25"] == 0.25
    assert m["within_22.5"] == 0.25


def test_normal_within_30_and_odd_median() -> None:
    # angles 29, 31, 10 -> within_30 = 2/3 (strictly below), within_11.25 = 1/3, median = 29
    pred = torch.tensor([_unit(29), _unit(31), _unit(10)]).T.reshape(1, 3, 1, 3)
    tgt = torch.tensor([[0.0, 0.0, 2.0]] * 3).T.reshape(1, 3, 1, 3)  # target normalised too
    m = evaluate({"normal": pred}, {"normal": tgt}, num_classes=0)["normal"]
    assert m["within_30"] == pytest.approx(2 / 3)
    assert m["within_11.25"] == pytest.approx(1 / 3)
    assert m["median"] == pytest.approx(29.0, abs=1e-4)


# --------------------------------------------------------------------------- streaming
def _random_split(n: int, seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    h, w, c = 5, 6, 4
    seg_t = torch.randint(-1, c, (n, h, w), generator=g)
    depth_t = torch.rand(n, 1, h, w, generator=g) * 5 + 0.1
    depth_t[torch.rand(n, 1, h, w, generator=g) < 0.2] = 0.0
    normal_t = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
    normal_t *= (torch.rand(n, 1, h, w, generator=g) > 0.2).float()
    preds = {
        "seg": torch.randn(n, c, h, w, generator=g),
        "depth": torch.rand(n, 1, h, w, generator=g) * 5,
        "normal": torch.randn(n, 3, h, w, generator=g),
    }
    return preds, {"seg": seg_t, "depth": depth_t, "normal": normal_t}


def test_streaming_equals_evaluate() -> None:
    preds, targets = _random_split(7, seed=3)
    whole = evaluate(preds, targets, num_classes=4)
    sm = StreamingMetrics(["seg", "depth", "normal"], num_classes=4)
    for lo, hi in [(0, 3), (3, 4), (4, 7)]:  # uneven batches
        sm.update({k: v[lo:hi] for k, v in preds.items()}, {k: v[lo:hi] for k, v in targets.items()})
    stream = sm.compute()
    assert stream["seg"] == whole["seg"]
    assert stream["normal"] == whole["normal"]
    for k, v in whole["depth"].items():
        assert abs(stream["depth"][k] - v) <= 1e-12 * abs(v)
    sm.reset()
    assert math.isnan(sm.compute()["normal"]["mean"])


def test_only_shared_tasks_and_missing_task() -> None:
    preds, targets = _random_split(2, seed=0)
    out = evaluate({"seg": preds["seg"], "depth": preds["depth"]}, {"seg": targets["seg"]}, num_classes=4)
    assert set(out) == {"seg"}
    sm = StreamingMetrics(["seg", "depth"], num_classes=4)
    with pytest.raises(KeyError, match="depth"):
        sm.update({"seg": preds["seg"]}, targets)


# --------------------------------------------------------------------------- Δm%
def test_delta_m_hand_computed() -> None:
    base = {"seg": {"miou": 0.40}, "depth": {"abs_err": 0.50}, "normal": {"mean": 20.0}}
    # miou 0.42: +5 (higher better); abs_err 0.55: -10 (lower better, worse);
    # normal mean 18: +10 (lower better, better).  Δm = (5 - 10 + 10) / 3 = 5/3
    # (normal median has no baseline, so it is not one of the K metrics)
    mtl = {"seg": {"miou": 0.42}, "depth": {"abs_err": 0.55}, "normal": {"mean": 18.0, "median": 1.0}}
    assert delta_m(mtl, base) == pytest.approx(5 / 3, abs=1e-12)
    assert delta_m(base, base) == 0.0


def test_delta_m_sign_convention() -> None:
    base = {"depth": {"abs_err": 1.0}, "seg": {"pix_acc": 0.5}}
    assert delta_m({"depth": {"abs_err": 0.9}}, base) > 0  # lower error = better = positive
    assert delta_m({"seg": {"pix_acc": 0.6}}, base) > 0
    assert delta_m({"depth": {"abs_err": 1.1}}, base) < 0


def test_delta_m_errors() -> None:
    with pytest.raises(ConfigError, match="share no metric"):
        delta_m({"seg": {"miou": 0.5}}, {"depth": {"abs_err": 1.0}})
    with pytest.raises(ConfigError, match="is 0"):
        delta_m({"seg": {"miou": 0.5}}, {"seg": {"miou": 0.0}})


def test_tables() -> None:
    preds, targets = _random_split(2, seed=1)
    out = evaluate(preds, targets, num_classes=4)
    assert list(out) == ["seg", "depth", "normal"]
    assert {t: tuple(d) for t, d in out.items()} == {t: tasks.create(t).metric_names for t in out}
    flat = flatten(out)
    assert flat["seg/miou"] == out["seg"]["miou"]
    assert len(flat) == 9 and all(isinstance(v, float) for v in flat.values())


def test_directions_and_primary_come_from_the_task() -> None:
    assert lower_is_better("depth", "abs_err") is True and lower_is_better("seg", "miou") is False
    assert lower_is_better("normal", "within_30") is False
    assert lower_is_better("depth", "miou") is None and lower_is_better("edges", "f1") is None
    assert [primary_metric(t) for t in ("seg", "depth", "normal")] == ["miou", "abs_err", "mean"]
    with pytest.raises(ConfigError, match="unknown task 'edges'"):
        primary_metric("edges")


def test_unknown_prediction_key_is_an_error_not_normals() -> None:
    preds, targets = _random_split(1, seed=2)
    with pytest.raises(ConfigError, match=r"\['edges'\] are not registered tasks; valid: .*normal"):
        evaluate({"edges": preds["normal"]}, {"edges": targets["normal"]}, num_classes=4)
    with pytest.raises(ConfigError, match="unknown task 'edges'"):
        StreamingMetrics(["edges"], num_classes=4)
    # target keys that are not predicted (the image, a task the model lacks) are ignored
    out = evaluate({"depth": preds["depth"]}, {**targets, "image": torch.zeros(1, 3, 5, 6)}, num_classes=4)
    assert list(out) == ["depth"]


def test_seg_needs_classes() -> None:
    with pytest.raises(ConfigError, match="num_classes must be >= 1 for seg"):
        StreamingMetrics(["seg"], num_classes=0)


def test_delta_m_counts_edge_ods_and_saliency_max_f_only() -> None:
    from densemtl.metrics import delta_m, in_delta_m, relative_improvement

    assert in_delta_m("edge", "ods_f") and not in_delta_m("edge", "loss") and not in_delta_m("edge", "ois_f")
    assert in_delta_m("seg", "miou") and in_delta_m("normal", "ang_mean")  # the NYUv2 tasks: every metric
    base = {"edge": {"ods_f": 0.5, "ois_f": 0.5, "loss": 0.2}, "saliency": {"max_f": 0.8, "iou": 0.5}}
    run = {"edge": {"ods_f": 0.55, "ois_f": 0.1, "loss": 9.0}, "saliency": {"max_f": 0.8, "iou": 0.1}}
    assert delta_m(run, base) == pytest.approx((10.0 + 0.0) / 2)
    assert relative_improvement(run, base) == pytest.approx(5.0)


def test_a_dataset_sets_its_tasks_metric_knobs() -> None:
    from densemtl.data.nyud import NYUDDataset
    from densemtl.errors import ConfigError
    from densemtl.metrics import StreamingMetrics
    from densemtl.tasks import TaskSet, create

    assert NYUDDataset.task_args == {"edge": {"max_dist": 0.011}}
    # a map shifted by 2 px on a 64x80 image: inside NYUD's 0.011 x diagonal (1.13 px)? no; inside 0.04? yes
    target = torch.zeros(1, 1, 64, 80)
    target[0, 0, :, 40] = 1
    pred = torch.full((1, 1, 64, 80), -8.0)
    pred[0, 0, :, 42] = 8.0
    tight = StreamingMetrics(TaskSet(["edge"], {"edge": {"max_dist": 0.011}}), 1)
    loose = StreamingMetrics(TaskSet(["edge"], {"edge": {"max_dist": 0.04}}), 1)
    for meter in (tight, loose):
        meter.update({"edge": pred}, {"edge": target})
    assert tight.compute()["edge"]["ods_f"] < 0.1 < 0.9 < loose.compute()["edge"]["ods_f"]
    with pytest.raises(ConfigError, match="task 'edge'"):
        create("edge", nope=1)

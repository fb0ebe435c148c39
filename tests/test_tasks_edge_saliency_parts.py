"""The ``edge``, ``saliency`` and ``parts`` tasks: BSDS matching, hand-computed metrics, losses,
the synthetic scenes' opt-in edge and saliency targets, and training on all five tasks."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densemtl import data, tasks
from densemtl.cli.main import main
from densemtl.data.synthetic import scene_edges
from densemtl.data.transforms import random_scale_crop_flip
from densemtl.errors import ConfigError
from densemtl.tasks._edge_eval import default_thresholds, edge_nms, image_counts, match_count, ods_ois, thin
from densemtl.tasks.edge import Edge

NEW = ("edge", "saliency", "parts")


def outline(h: int = 64, w: int = 80) -> np.ndarray:
    """A ground truth: a rectangle outline (its corners cut by thinning) and a vertical line."""
    gt = np.zeros((h, w), bool)
    gt[10, 10:50] = gt[40, 10:50] = True
    gt[10:41, 10] = gt[10:41, 49] = True
    gt[5:60, 65] = True
    return thin(gt)


def f_of(prob: np.ndarray, gt: np.ndarray, max_dist: float = 0.0075) -> tuple[float, float]:
    return ods_ois(image_counts(prob, gt, default_thresholds(9), max_dist)[None])


# -- BSDS matching ----------------------------------------------------------------------------------


def test_perfect_shifted_and_empty_maps() -> None:
    gt = outline()
    assert np.array_equal(thin(gt), gt) and gt.sum() == 193 - 4  # thin: 8-connected corners
    assert f_of(gt.astype(float), gt) == (1.0, 1.0)
    shifted = np.roll(gt, 1, axis=1).astype(float)
    diag = math.hypot(*gt.shape)
    within, beyond = 1.5 / diag, 0.9 / diag  # tolerance radius 1.5 px and 0.9 px
    assert f_of(shifted, gt, within)[0] == pytest.approx(1.0)
    assert f_of(shifted, gt, beyond)[0] < 0.6  # only the horizontal runs still overlap
    vertical = np.zeros_like(gt)
    vertical[5:60, 65] = True
    assert f_of(np.roll(vertical, 1, axis=1).astype(float), vertical, beyond) == (0.0, 0.0)
    assert f_of(np.zeros(gt.shape), gt) == (0.0, 0.0)
    assert f_of(gt.astype(float), np.zeros_like(gt)) == (0.0, 0.0)
    assert all(math.isnan(v) for v in ods_ois(np.zeros((0, 9, 3))))


def test_matching_is_one_to_one_within_the_radius() -> None:
    pred = np.zeros((5, 5), bool)
    gt = np.zeros((5, 5), bool)
    pred[2, 1] = pred[2, 3] = True
    gt[2, 2] = True
    assert match_count(pred, gt, 1.0) == 1  # two candidates, one ground-truth pixel
    assert match_count(pred, gt, 0.99) == 0
    gt[1, 1] = True
    assert match_count(pred, gt, 1.0) == 2  # (2,1)-(1,1) and (2,3)-(2,2)
    assert match_count(pred, gt, math.sqrt(2)) == 2


def test_ods_and_ois_from_hand_counts() -> None:
    # image A is best at threshold 0 (F = 0.8), image B at threshold 1 (F = 2/3)
    counts = np.array([[[4, 5, 5], [1, 5, 1]], [[1, 4, 4], [2, 4, 2]]])
    _, ois = ods_ois(counts)
    assert ois == pytest.approx(2 * (6 / 7) * (6 / 9) / (6 / 7 + 6 / 9))  # P = 6/7, R = 6/9
    # dataset level: t0 P = R = 5/9 (F .556), t1 P = 1, R = 3/9 (F .5); interpolating helps
    ods, _ = ods_ois(counts)
    s = np.linspace(0, 1, 101)
    p, r = 5 / 9 * (1 - s) + s, 5 / 9 * (1 - s) + 3 / 9 * s
    assert ods == pytest.approx(float((2 * p * r / (p + r)).max())) and ods > 5 / 9


def test_nms_keeps_the_ridge() -> None:
    prob = np.zeros((20, 20))
    prob[:, 9], prob[:, 10], prob[:, 11] = 0.5, 1.0, 0.5
    kept = edge_nms(prob)
    assert (kept[3:-3, 10] == 1.0).all() and (kept[3:-3, [9, 11]] == 0).all()


def _pyedgeeval():
    """(correspond_pixels, bwmorph_thin) of pyEdgeEval, or a skip (its other modules need cv2)."""
    pe = pytest.importorskip("pyEdgeEval")
    from pyEdgeEval._lib import correspond_pixels

    path = Path(pe.__file__).parent / "preprocess" / "thin" / "bwmorph_thin.py"
    spec = importlib.util.spec_from_file_location("_bwmorph_thin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(np, "in1d"):  # removed in numpy 2.4; the reference still calls it
        shim = type("NumpyShim", (), {"__getattr__": lambda self, k: getattr(np, k)})()
        shim.in1d = lambda a, b: np.isin(np.asarray(a), b)
        module.np = shim
    return correspond_pixels, module.bwmorph_thin


def test_agrees_with_pyedgeeval() -> None:
    from pyEdgeEval.common.metrics import compute_rec_prec_f1, interpolated_max_scores

    correspond_pixels, bwmorph_thin = _pyedgeeval()
    from scipy import ndimage

    rng = np.random.default_rng(0)
    thresholds = default_thresholds(9)
    for max_dist in (0.0075, 0.02):
        counts, reference = [], []
        for _ in range(4):
            gt = thin(ndimage.gaussian_filter(rng.random((64, 80)), 2) > 0.5) & (rng.random((64, 80)) < 0.9)
            gt = np.asarray(bwmorph_thin(gt), bool)
            prob = np.clip(ndimage.gaussian_filter(gt * 1.0, 1) * 2 + rng.normal(0, 0.15, gt.shape), 0, 1)
            counts.append(image_counts(prob, gt, thresholds, max_dist))
            rows = []
            for t in thresholds:
                binary = np.asarray(bwmorph_thin(prob >= t), bool)
                assert np.array_equal(binary, thin(prob >= t))  # MATLAB's thinning, exactly
                m_pred, m_gt, _, _ = correspond_pixels(binary, gt, max_dist=max_dist)
                rows.append([(m_gt > 0).sum(), gt.sum(), (m_pred > 0).sum(), binary.sum()])
            reference.append(rows)
        ref = np.asarray(reference, float)  # (N, T, [matched gt, gt, matched pred, pred])
        total = ref.sum(0)
        rec, prec, _ = compute_rec_prec_f1(total[:, 0], total[:, 1], total[:, 2], total[:, 3])
        ref_ods = interpolated_max_scores(thresholds, rec, prec)[3]
        best = [r[np.argmax(compute_rec_prec_f1(r[:, 0], r[:, 1], r[:, 2], r[:, 3])[2])] for r in ref]
        ref_ois = compute_rec_prec_f1(*np.sum(best, axis=0))[2]
        ods, ois = ods_ois(np.stack(counts))
        assert ods == pytest.approx(ref_ods, abs=0.01) and ois == pytest.approx(ref_ois, abs=0.01)


# -- the edge task --------------------------------------------------------------------------------


def test_edge_loss_by_hand_and_as_invpt_writes_it() -> None:
    edge = tasks.create("edge")
    pred = torch.tensor([0.0, math.log(3.0), 5.0]).view(1, 1, 1, 3)
    target = torch.tensor([1.0, 0.0, -1.0]).view(1, 1, 1, 3)  # the last pixel is ignored
    expected = (0.95 * math.log(2.0) + 0.05 * math.log(4.0)) / 2
    assert edge.loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    w = 0.95
    invpt = F.binary_cross_entropy_with_logits(pred[..., :2], target[..., :2], pos_weight=torch.tensor(w / (1 - w)))
    assert edge.loss(pred, target).item() == pytest.approx(invpt.item() * (1 - w), rel=1e-6)
    assert Edge(pos_weight=0.5).loss(pred, target).item() == pytest.approx(0.5 * math.log(8.0) / 2, rel=1e-6)
    with pytest.raises(ConfigError, match="pos_weight"):
        Edge(pos_weight=1.0)


def test_edge_accumulator_streams_counts_and_the_loss() -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.from_numpy(np.stack([outline()] * 3)).float()[:, None]
    gt[1, :, 30:, :] = -1  # ignored pixels
    pred = 4 * (2 * gt.clamp(0, 1) - 1) + torch.randn(gt.shape, generator=g)
    edge = Edge(thresholds=9)
    whole, parts = edge.accumulator(7), edge.accumulator(7)
    whole.update(pred, gt)
    parts.update(pred[:1], gt[:1])
    parts.update(pred[1:], gt[1:])
    assert whole.compute() == pytest.approx(parts.compute(), rel=1e-12)
    assert np.array_equal(np.stack(whole.counts), np.stack(parts.counts))
    assert whole.compute()["loss"] == pytest.approx(edge.loss(pred.double(), gt.double()).item(), rel=1e-9)
    assert whole.compute()["ods_f"] > 0.9


# -- saliency and parts, by hand --------------------------------------------------------------------


def test_saliency_max_f_and_iou_by_hand() -> None:
    prob = torch.tensor([0.92, 0.42, 0.62, 0.12, 0.99])
    target = torch.tensor([1.0, 1.0, 0.0, 0.0, -1.0])  # the last pixel is ignored
    acc = tasks.create("saliency").accumulator(7)
    acc.update(torch.logit(prob[:2].double()).view(1, 1, 1, 2), target[:2].view(1, 1, 1, 2))
    acc.update(torch.logit(prob[2:].double()).view(1, 1, 1, 3), target[2:].view(1, 1, 1, 3))
    # t <= .12: P .5 R 1; .12 < t <= .42: P 2/3 R 1; .42 < t <= .62: P .5 R .5; .62 < t <= .92: P 1 R .5
    f = [1.3 * p * r / (0.3 * p + r) for p, r in ((0.5, 1), (2 / 3, 1), (0.5, 0.5), (1, 0.5))]
    out = acc.compute()
    assert out["max_f"] == pytest.approx(max(f)) == pytest.approx(0.8125)
    assert out["iou"] == pytest.approx(1 / 3)  # at 0.5: predicted {.92, .62}, true {.92, .42}
    sal = tasks.create("saliency")
    logits = torch.tensor([[[[0.0, 2.0]]]])
    expected = (math.log(2.0) + math.log(1 + math.exp(2.0))) / 2
    assert sal.loss(logits, torch.tensor([[[[1.0, 0.0]]]])).item() == pytest.approx(expected, rel=1e-6)


def test_parts_miou_counts_only_images_with_people() -> None:
    parts = tasks.create("parts")
    assert parts.channels(21) == 7
    three = type(parts)(num_parts=2)
    person = torch.tensor([[[0, 1], [2, -1]]])
    nobody = torch.tensor([[[0, 0], [-1, 0]]])
    labels = torch.tensor([[[0, 1], [1, 2]], [[1, 1], [1, 1]]])
    logits = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    acc = three.accumulator(21)
    acc.update(logits, torch.cat([person, nobody]))
    # image 2 is skipped; image 1: background 1/1, part 1: 1/(1+1), part 2: 0/1
    assert acc.compute()["miou"] == pytest.approx((1 + 0.5 + 0) / 3)
    four = type(parts)(num_parts=3)
    acc = four.accumulator(21)
    acc.update(F.one_hot(labels, 4).permute(0, 3, 1, 2).float(), torch.cat([person, nobody]))
    assert acc.compute()["miou"] == pytest.approx(1.5 / 4)  # a part never seen counts as 0
    assert math.isnan(three.accumulator(21).compute()["miou"])
    target = torch.tensor([[[0, 2], [-1, 1]]])
    expected = F.cross_entropy(logits[:1].permute(0, 2, 3, 1)[target >= 0], target[target >= 0])
    assert three.loss(logits[:1], target).item() == pytest.approx(expected.item())


# -- what every task declares -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_declarations_pictures_and_averaging(name: str) -> None:
    task = tasks.create(name)
    assert task.primary in task.metric_names and not task.lower_is_better[task.primary]
    assert {c.metric for c in task.table_columns()} <= set(task.metric_names)
    assert set(task.accumulator(7).compute()) == set(task.metric_names)
    g = torch.Generator().manual_seed(1)
    c = task.channels(21)
    pred, peer = torch.randn(2, c, 6, 8, generator=g), torch.randn(2, c, 6, 8, generator=g)
    target = torch.randint(0, 2, (2, 6, 8), generator=g)
    target = target if name == "parts" else target[:, None].float()
    assert task.mimicry(pred, pred, target).item() == pytest.approx(0.0, abs=1e-6)
    assert task.mimicry(pred, peer, target).item() > 0
    two = task.ensemble([pred, peer])
    if name == "parts":
        assert torch.allclose(two.exp(), (pred.softmax(1) + peer.softmax(1)) / 2, atol=1e-6)
    else:
        assert torch.allclose(torch.sigmoid(two), (torch.sigmoid(pred) + torch.sigmoid(peer)) / 2, atol=1e-5)
    for picture in (task.colour(pred[0], 21), task.colour_target(target[0], 21)):
        assert picture.shape == (6, 8, 3) and picture.dtype == np.uint8
    grey = task.colour(pred[0], 21)
    assert (name == "parts") != bool((grey[..., 0] == grey[..., 2]).all())  # grey maps, coloured parts
    assert torch.equal(task.flip(target[0]), torch.flip(target[0], dims=[-1]))
    assert torch.equal(task.scale(target[0], 1.5), target[0])


# -- synthetic scenes -------------------------------------------------------------------------------


def _digest() -> str:
    h = hashlib.sha256()
    for split, augment in (("train", True), ("val", False)):
        ds = data.create("synthetic", split, size=(32, 40), n=4, seed=3, augment=augment)
        for i in range(4):
            sample = ds[i]
            for key in sorted(sample):
                h.update(key.encode() + str(sample[key].dtype).encode() + sample[key].numpy().tobytes())
    ds = data.create("synthetic", "train", size=(48, 64), n=2, seed=0)
    for i in range(2):
        sample = ds[i]
        for key in sorted(sample):
            h.update(key.encode() + sample[key].numpy().tobytes())
    return h.hexdigest()


def test_default_synthetic_scenes_are_unchanged() -> None:
    # computed on this platform before edges and saliency were added
    assert _digest() == "51df07f18e1558807341e70c521b6a678539d7d8ab7501616a4df9cd11392e39"
    assert data.create("synthetic", "val", size=(32, 40), n=1).tasks == ("seg", "depth", "normal")


def test_synthetic_edges_and_saliency_on_request() -> None:
    ds = data.create("synthetic", "train", size=(48, 64), n=2, tasks="seg,depth,normal,edge,saliency")
    plain = data.create("synthetic", "train", size=(48, 64), n=2)
    assert ds.tasks == ("seg", "depth", "normal", "edge", "saliency")
    sample = ds[0]
    assert list(sample) == ["image", *ds.tasks]
    assert all(torch.equal(sample[k], v) for k, v in plain[0].items())
    for key in ("edge", "saliency"):
        assert sample[key].shape == (1, 48, 64) and sample[key].dtype == torch.float32
        assert set(sample[key].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(sample["saliency"][0] > 0, sample["seg"] >= 3)  # objects (box … slab) vs room
    edge = sample["edge"][0].numpy() > 0
    assert edge.mean() < 0.15 and np.array_equal(thin(edge) | edge, edge)
    # every object silhouette is marked on one side or the other
    inside = sample["saliency"][0].numpy() > 0
    cut = inside[:, 1:] != inside[:, :-1]
    assert (edge[:, 1:] | edge[:, :-1])[cut].all()
    augmented = random_scale_crop_flip(sample, torch.Generator().manual_seed(0), scales=(1.5,))
    assert set(augmented["edge"].unique().tolist()) <= {0.0, 1.0}
    only = data.create("synthetic", "val", size=(32, 40), n=1, tasks="edge,saliency")
    assert list(only[0]) == ["image", "edge", "saliency"]
    for bad in ("seg,parts", "seg,seg", ""):
        with pytest.raises(ConfigError, match="tasks .* is invalid for the synthetic dataset"):
            data.create("synthetic", "val", n=1, tasks=bad)


def test_scene_edges_by_hand() -> None:
    instance = np.array([[0, 0, 1], [0, 0, 1]])
    surface = np.array([[4, 5, 8], [4, 5, 8]])  # two room faces meet between columns 0 and 1
    depth = np.array([[3.0, 3.0, 1.0], [3.0, 3.0, 1.0]], np.float32)
    assert scene_edges(instance, surface, depth).tolist() == [[1, 0, 1], [1, 0, 1]]


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
def test_trains_on_five_tasks(method: str, tmp_path: Path, tiny_args: list[str]) -> None:
    run = tmp_path / "run"
    argv = ["train", *tiny_args, "--data-arg", "tasks=seg,depth,normal,edge,saliency", "--method", method]
    assert main([*argv, "--out", str(run)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = records[-1]["train_loss"]
    assert set(losses) == {"seg", "depth", "normal", "edge", "saliency"}
    assert all(math.isfinite(v) for v in losses.values())
    val = records[-1]["val"]
    assert set(val["edge"]) == {"ods_f", "ois_f", "loss"} and set(val["saliency"]) == {"max_f", "iou"}
    assert all(0 <= val["edge"][m] <= 1 for m in ("ods_f", "ois_f")) and 0 <= val["saliency"]["max_f"] <= 1

"""Pictures people can read (issue 14): the prediction grid, the run's curves, the layer balance,
the bench page, ``predict``'s sizes and arrays, and the TensorBoard log.

Figures are checked by what they say (titles, labels, legends, marks, no empty panel), never by
their pixels."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from densemtl.bench.report import html_report, summarize
from densemtl.cli.main import main
from densemtl.report.diagnostic_plots import layer_balance_figure
from densemtl.report.plots import metrics_figure, plot_run, selected_epoch
from densemtl.report.task_views import raw_array
from densemtl.report.visualize import Sample, prediction_figure
from densemtl.tasks import create as get_task

H, W = 16, 20
SIX = ("seg", "depth", "normal", "edge", "saliency", "parts")


def _texts(fig: Figure) -> list[str]:
    """Every text of a figure: titles, axis labels, tick-free texts, legends, colour-bar labels."""
    out = [t.get_text() for f in [fig, *fig.subfigs] for t in f.texts]  # fig.axes holds the subfigures' axes
    insets = [child for parent in fig.axes for child in parent.child_axes]  # colour bars under a column
    for ax in [*fig.axes, *insets]:
        out += [ax.get_title(), ax.get_ylabel(), ax.get_xlabel(), *(t.get_text() for t in ax.texts)]
        if ax.get_legend() is not None:
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    for legend in fig.legends:
        out += [t.get_text() for t in legend.get_texts()]
    return [t for t in out if t]


def _empty_axes(fig: Figure) -> list[Any]:
    """Axes that show nothing: no image, line, collection or text."""
    return [ax for ax in fig.axes if not (ax.images or ax.lines or ax.collections or ax.texts or ax.patches)]


def _sample(seed: int, *, no_depth: bool = False) -> Sample:
    g = torch.Generator().manual_seed(seed)
    preds = {
        "seg": torch.randn(7, H, W, generator=g),
        "depth": torch.rand(1, H, W, generator=g) * 5 + 0.5,
        "normal": torch.randn(3, H, W, generator=g),
        "edge": torch.randn(1, H, W, generator=g),
        "saliency": torch.randn(1, H, W, generator=g),
        "parts": torch.randn(7, H, W, generator=g),
    }
    targets = {
        "seg": torch.randint(-1, 7, (H, W), generator=g),
        "depth": torch.zeros(1, H, W) if no_depth else torch.rand(1, H, W, generator=g) * 4 + 1,
        "normal": torch.randn(3, H, W, generator=g),
        "edge": torch.randint(0, 2, (1, H, W), generator=g).float(),
        "saliency": torch.randint(0, 2, (1, H, W), generator=g).float(),
        "parts": torch.randint(0, 7, (H, W), generator=g),
    }
    return Sample(torch.rand(3, H, W, generator=g), preds, targets)


def test_prediction_figure_explains_every_tile() -> None:
    names = ("floor", "wall", "ceiling", "box", "sphere", "cylinder", "slab")
    fig = prediction_figure([_sample(0), _sample(1, no_depth=True)], 7, class_names=names)
    try:
        texts = _texts(fig)
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        assert titles == ["input", *SIX]
        assert texts.count("ground truth") == 2 and "sample 1\nprediction" in texts
        assert {"floor", "wall"} <= set(texts)  # the seg legend names the classes
        assert {"head", "torso"} & set(texts)  # the parts legend names the parts
        assert any(t.startswith("depth (m)") for t in texts)  # colour bars in the tasks' units
        assert "saliency probability" in texts
        assert texts.count("no valid pixels") == 1  # the second sample has no depth
        assert any("(n + 1) / 2" in t for t in texts)
        assert not _empty_axes(fig)
    finally:
        plt.close(fig)


def test_raw_arrays_per_task() -> None:
    s = _sample(2)
    arrays = {t: raw_array(get_task(t), s.preds[t]) for t in SIX}
    assert arrays["seg"].dtype == np.int32 and arrays["seg"].shape == (H, W) and arrays["seg"].max() < 7
    assert arrays["depth"].shape == (H, W) and np.allclose(arrays["depth"], s.preds["depth"][0].numpy())
    assert arrays["normal"].shape == (H, W, 3) and np.allclose(np.linalg.norm(arrays["normal"], axis=-1), 1, atol=1e-5)
    assert arrays["edge"].shape == (H, W) and arrays["edge"].min() >= 0 and arrays["edge"].max() <= 1
    assert arrays["parts"].dtype == np.int32


def _history(peer: bool = False, weights: str = "constant") -> list[dict[str, Any]]:
    """Records as metrics.jsonl holds them: 4 epochs, depth never valid, the best epoch 2."""
    miou = [0.1, 0.3, 0.5, 0.4]
    out = []
    for e, m in enumerate(miou):
        val = {"seg": {"miou": m, "pix_acc": m + 0.2}, "depth": {"abs_err": None, "rel_err": None}}
        rec: dict[str, Any] = {"epoch": e, "val": val, "train_loss": None, "weights": None}
        if e:
            w = 1.0 if weights == "constant" else 1.0 + 0.1 * e
            rec["train_loss"] = {"seg": 2.0 / e, "depth": 1.0 / e}
            rec["weights"] = {"seg": w, "depth": 2.0 - w}
        if peer:
            rec["peer_val"] = {"seg": {"miou": m / 2, "pix_acc": m}, "depth": {"abs_err": None, "rel_err": None}}
            rec["ensemble_val"] = {"seg": {"miou": m, "pix_acc": m}, "depth": {"abs_err": None, "rel_err": None}}
            if e:
                rec["peer_train_loss"], rec["peer_weights"] = rec["train_loss"], rec["weights"]
        out.append(rec)
    return out


def test_metrics_figure_labels_marks_and_members() -> None:
    history = _history(peer=True)
    assert selected_epoch(history) == 2
    fig = metrics_figure(history, ("seg", "depth"))
    try:
        texts = _texts(fig)
        assert {"mIoU ↑", "pixAcc ↑", "absErr ↓", "relErr ↓"} <= set(texts)
        assert {"main network", "peer", "ensemble", "selected epoch 2"} <= set(texts)
        assert texts.count("no valid pixels\nin any epoch") == 2
        assert len(fig.axes) == 4 and not _empty_axes(fig)  # two panels per task, no empty one
        seg = next(ax for ax in fig.axes if ax.get_ylabel() == "mIoU ↑")
        assert {line.get_linestyle() for line in seg.lines} >= {"-", "--", ":"}
    finally:
        plt.close(fig)


@pytest.mark.parametrize("weights", ["constant", "varying"])
def test_weights_png_only_when_weights_change(tmp_path: Path, weights: str) -> None:
    written = {p.name for p in plot_run(_history(weights=weights), ("seg", "depth"), tmp_path)}
    assert {"losses.png", "metrics.png"} <= written
    assert ("weights.png" in written) == (weights == "varying")
    assert (tmp_path / "weights.png").exists() == (weights == "varying")


def test_layer_balance_over_epochs() -> None:
    records = [
        {
            "epoch": e,
            "layer_balance": {"enc.0": {"a": 0.2 + 0.1 * e, "b": 0.8 - 0.1 * e}, "dec.0": {"a": 0.5, "b": 0.5}},
        }
        for e in (1, 2, 3)
    ]
    fig = layer_balance_figure(records, ("a", "b"))
    try:
        heatmaps = [ax for ax in fig.axes if ax.images]
        assert [ax.get_title() for ax in heatmaps] == ["a", "b"]
        assert all(ax.images[0].get_array().shape == (2, 3) for ax in heatmaps)  # blocks × epochs
        assert [t.get_text() for t in heatmaps[0].get_xticklabels()] == ["1", "2", "3"]
        assert any("fair share 1/2" in t for t in _texts(fig))
    finally:
        plt.close(fig)


def test_bench_page_fits_and_colours_by_sign() -> None:
    rows = [
        {"arch": "segnet", "method": m, "seed": 0, "selected_epoch": 3, "seg/miou": v, "depth/abs_err": 0.5,
         "delta_m": d, "time_s": 1.0}
        for m, v, d in (("single-task", 0.4, 0.0), ("ew", 0.45, 2.5), ("mgda", 0.3, -4.0))
    ]  # fmt: skip
    page = html_report(summarize(rows), rows, "the best validation epoch")
    assert "name='viewport'" in page and "overflow-x:auto" in page
    header = page[page.index("<thead>") : page.index("</thead>")]
    assert header.index("Δm%") < header.index("mIoU")  # Δm% before the metric columns
    assert "seg/" not in header and "<th colspan='1' class='task'>seg</th>" in header
    assert "bar pos" in page and "bar neg" in page
    assert "± n/a" in page.replace("<small>±&#8202;", "± ")  # one seed: no spread


def test_tensorboard_steps_name_each_member(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from densemtl.engine import StepResult
    from densemtl.training.diagnostics import TensorBoardLog

    log = TensorBoardLog(tmp_path)
    for step in (1, 2):
        main_net = StepResult(torch.tensor([0.5, 2.0]), torch.tensor([1.0, 1.0]))
        peer = StepResult(torch.tensor([0.4, 1.5]), torch.tensor([0.7, 1.3]))
        log.log_step(step, [main_net, peer], ("seg", "depth"), ["", "peer"])
    log.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert {"step/loss/seg", "step/weight/depth", "step/peer/loss/depth", "step/peer/weight/seg"} <= set(
        acc.Tags()["scalars"]
    )
    assert [e.value for e in acc.Scalars("step/peer/weight/seg")] == pytest.approx([0.7, 0.7])


# -- end to end: a tiny run with TensorBoard, then predict -------------------------------------------
@pytest.fixture(scope="module")
def tb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorboard")
    run = tmp_path_factory.mktemp("tb") / "run"
    tiny = ["--size", "32x40", "--n-train", "8", "--n-val", "4", "--batch-size", "4", "--epochs", "2"]
    tiny += ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--quiet"]
    assert main(["train", *tiny, "--tensorboard", "--out", str(run)]) == 0
    return run


def test_tensorboard_has_steps_images_and_hparams(tb_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(tb_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"step/loss/seg", "step/weight/depth", "val/seg/miou"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("step/loss/seg")] == [1, 2, 3, 4]  # 8 images, batch 4, 2 epochs
    assert [e.step for e in acc.Images("predictions")] == [0, 1, 2]
    hp = EventAccumulator(str(tb_run / "tensorboard" / "hparams"))
    hp.Reload()
    start = hp.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["method"].string_value == "ew" and hparams["epochs"].number_value == 2
    final = json.loads((tb_run / "summary.json").read_text())["metrics"]["seg"]["miou"]
    assert math.isclose(hp.Scalars("final/seg/miou")[-1].value, final, rel_tol=1e-6)
    assert not (tb_run / "plots" / "weights.png").exists()  # ew: constant weights


def test_predict_keeps_aspect_and_saves_arrays(tb_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "wide.npy"
    np.save(image, np.random.default_rng(0).random((30, 90, 3), dtype=np.float32))
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(tb_run), str(image), "--out", str(out), "--save-npy"]) == 0
    panel = Image.open(out / "wide_pred.png")
    assert panel.size == (4 * 96 + 6, 32)  # the run's height (32), the image's 3:1 aspect ratio
    seg, depth, normal = (np.load(out / f"wide_{t}.npy") for t in ("seg", "depth", "normal"))
    assert seg.shape == depth.shape == (30, 90) and seg.dtype == np.int32 and normal.shape == (30, 90, 3)
    again = ["--size", "48x64", "--overwrite"]  # the same file again: replaced only when asked
    assert main(["predict", "--checkpoint", str(tb_run), str(image), "--out", str(out), *again]) == 0
    assert Image.open(out / "wide_pred.png").size == (4 * 64 + 6, 48)


@pytest.mark.parametrize("size", ["big", "8x8", "0x40", "20000x40"])
def test_predict_bad_size_is_one_line(
    tb_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((32, 40, 3), np.float32))
    out = tmp_path / "never"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tb_run), str(image), "--out", str(out), "--size", size]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--size {size!r}" in err, err
    assert not out.exists()

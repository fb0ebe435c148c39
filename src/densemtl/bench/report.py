"""Aggregating a bench: Δm% per cell against the single-task baseline, tables, CSV, Markdown, HTML.

Δm% of a cell (arch, method, seed) is :func:`densemtl.metrics.delta_m` of its test metrics against
the single-task baseline of the same architecture, averaged over the baseline's seeds (the mean
of each metric). Metrics whose baseline value is 0 or NaN are left out of Δm% (their relative
change is undefined). Over seeds, a cell's numbers are given as mean ± sample std (n − 1; 0 for a
single seed). Within one architecture, methods are ranked by mean Δm%, 1 = best.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from densemtl.metrics import Metrics, delta_m, flatten, lower_is_better


@dataclass(frozen=True)
class Result:
    """The test metrics of one finished run (a cell, or a baseline when ``method`` is 'single-task')."""

    arch: str
    method: str
    seed: int
    metrics: Metrics
    selected_epoch: int = 0
    time_s: float = 0.0


def mean_metrics(runs: Sequence[Metrics]) -> Metrics:
    """The mean of every metric over ``runs`` (NaNs ignored; NaN where every run is NaN)."""
    out: Metrics = {}
    for task, ms in runs[0].items():
        out[task] = {}
        for name in ms:
            vals = [r[task][name] for r in runs if not math.isnan(r[task][name])]
            out[task][name] = math.fsum(vals) / len(vals) if vals else float("nan")
    return out


def safe_delta_m(metrics: Metrics, baseline: Metrics) -> float:
    """``delta_m`` over the metrics whose baseline is finite and non-zero and whose value is not NaN."""
    keep_base: Metrics = {}
    keep: Metrics = {}
    for task, ms in metrics.items():
        for name, value in ms.items():
            b = baseline.get(task, {}).get(name)
            if b is None or b == 0 or math.isnan(b) or math.isnan(value):
                continue
            keep.setdefault(task, {})[name] = value
            keep_base.setdefault(task, {})[name] = b
    return delta_m(keep, keep_base) if keep else float("nan")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for one value)."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def cell_rows(cells: Sequence[Result], baselines: Sequence[Result]) -> list[dict[str, Any]]:
    """One flat row per run: arch, method, seed, every test metric, delta_m (vs the arch's baseline).

    Baseline runs come first, with their own Δm% against their mean (so their spread is visible).
    """
    base_mean = {
        arch: mean_metrics([b.metrics for b in baselines if b.arch == arch]) for arch in {b.arch for b in baselines}
    }
    rows = []
    for r in [*baselines, *cells]:
        ref = base_mean.get(r.arch)
        dm = safe_delta_m(r.metrics, ref) if ref is not None else float("nan")
        rows.append(
            {
                "arch": r.arch,
                "method": r.method,
                "seed": r.seed,
                "selected_epoch": r.selected_epoch,
                **flatten(r.metrics),
                "delta_m": dm,
                "time_s": r.time_s,
            }
        )
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (arch, method): n seeds, (mean, std) of every metric and of delta_m, and the rank by Δm%.

    Ranks are within an architecture over the methods (the single-task baseline is not ranked).
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["arch"], row["method"]), []).append(row)
    metric_keys = [k for k in rows[0] if "/" in k] if rows else []
    out = []
    for (arch, method), rs in groups.items():
        entry: dict[str, Any] = {"arch": arch, "method": method, "n": len(rs)}
        for key in [*metric_keys, "delta_m"]:
            entry[key] = mean_std([float(r[key]) for r in rs])
        out.append(entry)
    for arch in {e["arch"] for e in out}:
        ranked = [e for e in out if e["arch"] == arch and e["method"] != "single-task"]
        ranked.sort(key=lambda e: -e["delta_m"][0] if not math.isnan(e["delta_m"][0]) else math.inf)
        for i, e in enumerate(ranked, 1):
            e["rank"] = i
    out.sort(key=lambda e: (e["arch"], e.get("rank", 0)))
    return out


def _fmt(ms: tuple[float, float], digits: int = 4, n: int = 2) -> str:
    """``mean ± std``; the std of one seed is "n/a" (not 0)."""
    m, s = ms
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f} ± " + ("n/a" if n < 2 or math.isnan(s) else f"{s:.{digits}f}")


def _arrow(key: str) -> str:
    task, _, name = key.partition("/")
    lower = lower_is_better(task, name)
    return "" if lower is None else (" ↓" if lower else " ↑")


def table(summary: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the results table (one row per arch × method)."""
    metric_keys = [k for k in summary[0] if "/" in k] if summary else []
    header = ["arch", "method", "seeds", *(k + _arrow(k) for k in metric_keys), "Δm% ↑", "rank"]
    body = [
        [
            e["arch"],
            e["method"],
            str(e["n"]),
            *(_fmt(e[k], 4, e["n"]) for k in metric_keys),
            _fmt(e["delta_m"], 2, e["n"]),
            str(e.get("rank", "–")),
        ]
        for e in summary
    ]
    return header, body


NOTE = (
    "Test metrics are those of the dataset's own validation split, used here as the test split. "
    "Model selection never looks at it: {rule}. Δm% is against the single-task baseline of the same "
    "architecture (one network of that architecture per task, equal weighting, same data, epochs, "
    "seeds and selection rule), averaged over its seeds; metrics whose baseline value is 0 are left "
    "out of Δm%. Values are mean ± sample std over seeds; rank is by mean Δm% within an architecture."
)


def markdown(summary: Sequence[dict[str, Any]], rule: str, title: str = "densemtl bench") -> str:
    header, body = table(summary)
    lines = [f"# {title}", "", NOTE.format(rule=rule), ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def delta_plot_png(summary: Sequence[dict[str, Any]]) -> bytes:
    """A bar chart of mean Δm% (± std) per arch/method, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in summary if e["method"] != "single-task"]
    archs = sorted({e["arch"] for e in entries})
    labels = [e["method"] if len(archs) == 1 else f"{e['arch']}/{e['method']}" for e in entries]
    means = [0.0 if math.isnan(e["delta_m"][0]) else e["delta_m"][0] for e in entries]
    stds = [0.0 if math.isnan(e["delta_m"][1]) else e["delta_m"][1] for e in entries]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(entries) + 2), 3.5))
    colors = ["tab:green" if m >= 0 else "tab:red" for m in means]
    ax.bar(range(len(entries)), means, yerr=stds, color=colors, capsize=3)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(entries)), labels, rotation=45, ha="right")
    ax.set_ylabel("Δm% vs single-task")
    if len(archs) == 1:
        ax.set_title(f"{archs[0]}: green better than single-task, red worse", fontsize=9)
    else:
        ax.set_title("green better than single-task, red worse", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _metric_groups(keys: Sequence[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """``["seg/miou", "seg/pix_acc", "depth/abs_err"]`` → ``[("seg", [("seg/miou", "mIoU ↑"), …]), …]``:
    the task once over its metrics, each metric by its short column label and direction."""
    from densemtl import tasks as task_registry
    from densemtl.tasks import TaskSet

    groups: dict[str, list[tuple[str, str]]] = {}
    for key in keys:
        task, _, name = key.partition("/")
        label = name
        if task in task_registry.available():
            columns = TaskSet([task])[task].table_columns()  # the labels depend on no knob
            label = next((c.label for c in columns if c.metric == name), name)
        groups.setdefault(task, []).append((key, label + _arrow(key)))
    return list(groups.items())


def _bar(value: float, scale: float) -> str:
    """An inline bar of ``value`` (Δm%): green to the right for an improvement, red to the left."""
    if math.isnan(value) or scale <= 0:
        return ""
    width = max(1, round(40 * min(abs(value) / scale, 1.0)))
    side = "pos" if value >= 0 else "neg"
    return f"<span class='bar {side}'><span style='width:{width}px'></span></span>"


def _grouped_table(
    lead: Sequence[str], groups: list[tuple[str, list[tuple[str, str]]]], body: Sequence[Sequence[str]]
) -> str:
    """A table whose first columns are ``lead`` and the rest one header cell per task over its
    metrics; ``body`` cells are HTML already."""
    top = "".join(f"<th rowspan='2'>{html.escape(h)}</th>" for h in lead)
    top += "".join(f"<th colspan='{len(ms)}' class='task'>{html.escape(t)}</th>" for t, ms in groups)
    sub = "".join(f"<th>{html.escape(label)}</th>" for _, ms in groups for _, label in ms)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
    return f"<div class='scroll'><table><thead><tr>{top}</tr><tr>{sub}</tr></thead><tbody>{rows}</tbody></table></div>"


def _mean_std_html(ms: tuple[float, float], digits: int, n: int) -> str:
    m, s = ms
    if math.isnan(m):
        return "n/a"
    spread = "n/a" if n < 2 or math.isnan(s) else f"{s:.{digits}f}"
    return f"{m:.{digits}f}<small>±&#8202;{spread}</small>"


STYLE = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1em auto;max-width:1400px;padding:0 1em}"
    ".scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:.5em 0;font-size:13px}"
    "td,th{border:1px solid #ddd;padding:2px 6px;text-align:right;white-space:nowrap}"
    "th{background:#f2f2f2;font-weight:600}th.task{text-align:center;background:#e6e6e6}"
    "td:first-child,th:first-child{position:sticky;left:0;background:#fafafa;text-align:left}"
    "small{color:#666;margin-left:2px}img{max-width:100%;height:auto}"
    ".bar{display:inline-block;width:40px;height:9px;margin-left:6px;background:#f4f4f4;vertical-align:middle}"
    ".bar span{display:block;height:9px}.bar.pos span{background:#2ca02c}"
    ".bar.neg{direction:rtl}.bar.neg span{background:#d62728}"
    ".pos-text{color:#1a7a1a}.neg-text{color:#b01c1c}"
)


def html_report(summary: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], rule: str) -> str:
    """A self-contained page that fits a laptop screen: the note, the summary table (Δm% right
    after the method, a bar coloured by its sign; metrics grouped under their task), the Δm% plot
    and the per-run table."""
    metric_keys = [k for k in summary[0] if "/" in k] if summary else []
    groups = _metric_groups(metric_keys)
    finite = [abs(e["delta_m"][0]) for e in summary if not math.isnan(e["delta_m"][0])]
    scale = max(finite, default=0.0)

    def delta_cell(value: float, text: str) -> str:
        tone = "" if math.isnan(value) else (" class='pos-text'" if value >= 0 else " class='neg-text'")
        return f"<span{tone}>{text}</span>{_bar(value, scale)}"

    body = [
        [
            html.escape(e["arch"]),
            html.escape(e["method"]),
            str(e["n"]),
            delta_cell(e["delta_m"][0], _mean_std_html(e["delta_m"], 2, e["n"])),
            str(e.get("rank", "–")),
            *(_mean_std_html(e[k], 4, e["n"]) for _, ms in groups for k, _ in ms),
        ]
        for e in summary
    ]
    summary_table = _grouped_table(["arch", "method", "seeds", "Δm% ↑", "rank"], groups, body)
    run_groups = _metric_groups([k for k in rows[0] if "/" in k]) if rows else []
    run_body = [
        [
            html.escape(str(r["arch"])),
            html.escape(str(r["method"])),
            str(r["seed"]),
            delta_cell(float(r["delta_m"]), html.escape(_cell(float(r["delta_m"])))),
            str(r.get("selected_epoch", "")),
            html.escape(_cell(r.get("time_s", float("nan")))),
            *(html.escape(_cell(r[k])) for _, ms in run_groups for k, _ in ms),
        ]
        for r in rows
    ]
    run_table = _grouped_table(["arch", "method", "seed", "Δm% ↑", "epoch", "time (s)"], run_groups, run_body)
    png = base64.b64encode(delta_plot_png(summary)).decode()
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>densemtl bench</title><style>{STYLE}</style>"
        f"</head><body><h1>densemtl bench</h1><p>{html.escape(NOTE.format(rule=rule))}</p>"
        f"<h2>Summary</h2>{summary_table}"
        f"<h2>Δm% per method</h2><img alt='delta m per method' src='data:image/png;base64,{png}'>"
        f"<h2>Every run</h2><p>epoch: the epoch selected on the validation split; ↑ higher is better, ↓ lower.</p>"
        f"{run_table}</body></html>\n"
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_reports(out: Path, cells: Sequence[Result], baselines: Sequence[Result], rule: str) -> list[dict[str, Any]]:
    """Write ``results.csv``, ``results.md`` and ``report.html`` into ``out`` (each atomically; one row
    per run, a run given twice is a bug); return the summary."""
    from densemtl.training.checkpoint import atomic_write_text

    keys = [(r.arch, r.method, r.seed) for r in [*baselines, *cells]]
    if len(set(keys)) != len(keys):
        raise ValueError(f"bench: a run is reported twice: {sorted(k for k in keys if keys.count(k) > 1)}")
    rows = cell_rows(cells, baselines)
    summary = summarize(rows)
    fields = list(rows[0]) if rows else ["arch", "method", "seed"]
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
    # Each file whole or not at all: a kill while writing leaves the previous version.
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.md", markdown(summary, rule))
    atomic_write_text(out / "report.html", html_report(summary, rows, rule))
    return summary

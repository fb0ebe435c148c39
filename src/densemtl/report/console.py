"""The per-epoch validation table printed during training."""

from __future__ import annotations

COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "seg": [("miou", "mIoU", "{:.3f}"), ("pix_acc", "pixAcc", "{:.3f}")],
    "depth": [("abs_err", "absErr", "{:.3f}"), ("rel_err", "relErr", "{:.3f}")],
    "normal": [
        ("mean", "angMean", "{:.1f}"),
        ("median", "angMed", "{:.1f}"),
        ("within_11.25", "<11.25", "{:.3f}"),
        ("within_22.5", "<22.5", "{:.3f}"),
        ("within_30", "<30", "{:.3f}"),
    ],
}
WIDTH = 8


def metrics_header(tasks: tuple[str, ...]) -> str:
    cells = ["epoch".rjust(5)]
    for t in tasks:
        cells += [label.rjust(WIDTH) for _, label, _ in COLUMNS[t]]
    return " ".join(cells)


def metrics_row(epoch: int, metrics: dict[str, dict[str, float]], tasks: tuple[str, ...]) -> str:
    cells = [str(epoch).rjust(5)]
    for t in tasks:
        for key, _, fmt in COLUMNS[t]:
            value = metrics[t].get(key)
            ok = value is not None and value == value
            cells.append((fmt.format(value) if ok else "-").rjust(WIDTH))
    return " ".join(cells)

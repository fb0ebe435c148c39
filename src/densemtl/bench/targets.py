"""This project's own speed bounds at T=3, as bounds on a row of ``measure_speed``: a regression
check for its benchmark scripts, kept in ``--json`` rows (``target``, ``met``, ``missed``) and never
printed by ``densemtl speed``, whose table speaks of the user's choices (mode, ``--recompute-every``).

Ratios to EW: loss weightings <= 1.05 (FAMO <= 1.4); representation mode <= 1.15; exact
per-task modes (gramian, parameters) <= 1.8 and at most 0.85x the naive loop; amortised with
``recompute_every`` >= 4 <= 1.25; peak memory <= 1.3x EW in every mode.
"""

from __future__ import annotations

from typing import Any

BASELINE = "ew"
NAIVE = "naive-loop"
MEM_TARGET = 1.3


def time_targets(row: dict[str, Any]) -> tuple[float | None, float | None]:
    """The bounds for a row at T=3: (max ratio to EW, max ratio to the naive loop)."""
    if row["method"] in (BASELINE, NAIVE):
        return None, None
    if row["mode"] == "loss":
        # a row may time a variant, "name:key=value": the bound is the method's own
        return (1.4 if str(row["method"]).split(":")[0] == "famo" else 1.05), None
    if row.get("recompute_every", 1) >= 4:
        return 1.25, None
    if row["mode"] == "representation":
        return 1.15, None
    return 1.8, 0.85


def assess(row: dict[str, Any]) -> None:
    """Set ``target`` (text), ``met`` (bool, None for the baseline and reference) and ``missed``."""
    ew_bound, naive_bound = time_targets(row)
    if ew_bound is None:
        row.update({"target": None, "met": None, "missed": []})
        return
    parts = [f"time<={ew_bound:g}xEW"]
    missed = []
    if row["ratio_to_ew"] is not None and row["ratio_to_ew"] > ew_bound:
        missed.append("time")
    if naive_bound is not None:
        parts.append(f"<={naive_bound:g}xnaive")
        if row.get("ratio_to_naive") is not None and row["ratio_to_naive"] > naive_bound:
            missed.append("vs naive")
    parts.append(f"mem<={MEM_TARGET:g}xEW")
    if row["mem_ratio"] is not None and row["mem_ratio"] > MEM_TARGET:
        missed.append("mem")
    row.update({"target": ", ".join(parts), "met": not missed, "missed": missed})

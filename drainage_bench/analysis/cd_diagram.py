"""The critical-difference diagram of Demšar (2006, Fig. 1): losses placed on an axis of mean
ranks (1 = best, on the left), a bar of length CD (the Nemenyi critical difference) above the
axis, and thick lines joining the groups of losses whose mean ranks lie within CD of each other
(not significantly different at alpha). matplotlib (Agg) only; the numbers come from
`stats.rank_summary` through `tables.add_ranks`.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from drainage_bench.analysis.stats import RankSummary  # noqa: E402


def cd_diagram(summary: RankSummary, title: str = "") -> Figure | None:
    """The diagram of `summary`; None where the Friedman test is undefined (fewer than 3 losses
    or 2 complete columns): a diagram without a test would look like evidence."""
    if summary.n < 2 or summary.k < 3 or math.isnan(summary.cd):
        return None
    k = summary.k
    order = summary.mean_ranks.sort_values(kind="stable")
    left = list(order.items())[: math.ceil(k / 2)]
    right = list(order.items())[math.ceil(k / 2):]
    rows = max(len(left), len(right))
    fig, ax = plt.subplots(figsize=(7.0, 1.6 + 0.3 * rows + 0.15 * len(summary.cliques())), layout="constrained")
    lo, hi = 1, k
    ax.set_xlim(lo - 2.0, hi + 2.0)  # room for the labels beside the axis
    ax.hlines(0, lo, hi, color="black", linewidth=1)
    for r in range(lo, hi + 1):
        ax.vlines(r, 0, 0.08, color="black", linewidth=1)
        ax.text(r, 0.12, str(r), ha="center", va="bottom", fontsize=9)
    # The CD bar above the axis, starting at rank 1.
    ax.hlines(0.45, lo, lo + summary.cd, color="black", linewidth=2)
    ax.vlines([lo, lo + summary.cd], 0.38, 0.52, color="black", linewidth=1)
    ax.text(lo + summary.cd / 2, 0.56, f"CD = {summary.cd:.2f}", ha="center", va="bottom", fontsize=9)
    # The cliques: thick lines just below the axis.
    cliques = summary.cliques()
    for i, group in enumerate(cliques):
        y = -0.12 - 0.1 * i
        ranks = [order[name] for name in group]
        ax.hlines(y, min(ranks) - 0.03, max(ranks) + 0.03, color="tab:red", linewidth=3)
    # Each loss: a line down from its rank, then out to its label at the side.
    top = -0.2 - 0.1 * len(cliques)
    for side, items in (("left", left), ("right", right)):
        for i, (name, rank) in enumerate(items):
            y = top - 0.28 * (i if side == "left" else len(items) - 1 - i)
            end = lo - 0.3 if side == "left" else hi + 0.3
            ax.vlines(rank, y, 0, color="0.3", linewidth=0.8)
            ax.hlines(y, min(rank, end), max(rank, end), color="0.3", linewidth=0.8)
            ax.text(end + (-0.05 if side == "left" else 0.05), y, f"{name} ({rank:.2f})",
                    ha="right" if side == "left" else "left", va="center", fontsize=9)
    ax.set_ylim(top - 0.28 * rows, 0.8)
    ax.axis("off")
    ax.set_title(title or f"mean rank over {summary.n} columns (Friedman p = {summary.pvalue:.3g}; "
                 f"Nemenyi, alpha = {summary.alpha:g})", fontsize=10)
    return fig

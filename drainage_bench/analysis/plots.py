"""Figures from the results store (matplotlib, Agg backend), written as PNG and PDF.

- `accuracy_vs_noise`: the metric against the noise rate, one panel per noise type with rates
  (the clean column is the point at 0%), one line per loss: the mean over seeds, with a band of
  ± one sample standard deviation (ddof = 1).
- `learning_curves`: for one noise setting, one panel per loss: test accuracy, training accuracy
  against the clean labels and against the noisy labels trained on, and the share of mislabeled
  training samples predicted as their wrong label (memorisation), per epoch, mean over seeds.
- `corruption_severity`: error and ECE against the corruption severity (0 = the clean test set),
  one line per loss, per noise setting: each trial's mean over corruptions, then mean ± std over
  seeds (trials run with ``corruptions`` set).
- `drainage_histograms`: for drainage runs, the distribution of the drainage probability at the
  end of training for clean vs mislabeled training samples (pooled over seeds, each group
  normalised to 100%).

Every function takes a `tables.Selection` (the accuracy and critical-difference figures: the
table `tables.aggregate` made of it) and returns a matplotlib Figure (or None when there is
nothing to draw); `write_figure` saves it.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from drainage_bench.analysis.tables import Column, Selection, TableData, aggregate, scale  # noqa: E402
from drainage_bench.catalog import RATED_TYPES, get_metric  # noqa: E402
from drainage_bench.errors import UserError, did_you_mean  # noqa: E402

CURVES = (  # epoch column, legend label, line style
    ("test_acc", "test accuracy", "-"),
    ("train_acc_clean", "train accuracy vs clean labels", "--"),
    ("train_acc_noisy", "train accuracy vs noisy labels (trained on)", ":"),
    ("memorized", "mislabeled samples fit to their wrong label", "-."),
)
CURVE_COLORS = ("black", "tab:blue", "tab:orange", "tab:red")


def loss_colors(rows: list[str]) -> dict[str, tuple]:
    """One colour per loss, the same in every figure of a selection."""
    cmap = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    return {row: cmap(i % cmap.N) for i, row in enumerate(rows)}


def _grid(n: int, ncols: int, size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


# ---------------------------------------------------------------------------------------------
# Accuracy against noise rate


def accuracy_vs_noise(data: TableData) -> Figure | None:
    """One panel per (dataset, rated noise type) of a table (`aggregate`); x: noise rate (%),
    y: the metric (in percent where it is a fraction, as the table shows it)."""
    factor = scale(data.metric)
    panels = list(dict.fromkeys((c.dataset, c.noise) for c in data.columns if c.noise in RATED_TYPES))
    if not panels:
        return None
    colors = loss_colors(data.rows)
    several = len({d for d, _ in panels}) > 1
    fig, axes = _grid(len(panels), 3, (4.6, 3.6))
    for ax, (dataset, noise) in zip(axes.flat, panels):
        cols = [c for c in data.columns if c.dataset == dataset and (c.noise == noise or c.noise == "none")]
        cols.sort(key=lambda c: c.rate)
        for row in data.rows:
            x, mean, std = _series(data.cells, row, cols, factor)
            if not len(x):
                continue
            ax.plot(x, mean, marker="o", ms=4, color=colors[row], label=row)
            ax.fill_between(x, mean - np.nan_to_num(std), mean + np.nan_to_num(std), color=colors[row],
                            alpha=0.15, linewidth=0)
        ax.set_title(f"{dataset}: {Column(dataset, noise, 0.0, None).group.lower()} noise" if several
                     else f"{Column(dataset, noise, 0.0, None).group} noise")
        ax.set_xlabel("noise rate (%)")
        ax.set_ylabel(data.metric.title + (" (%)" if data.metric.percent else ""))
        ax.set_xticks([100 * c.rate for c in cols])
        ax.grid(alpha=0.3)
    _legend(fig, axes.flat, title="loss")
    fig.suptitle(f"{data.metric.title}: mean ± std over seeds ({_seeds(data.cells)}) — {', '.join(data.sweeps)}",
                 fontsize=10)
    return fig


def _series(cells: pd.DataFrame, row: str, cols: list[Column],
            factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (rate %), mean and std (times `factor`) of the cells of one row that have a value."""
    points = [(100 * c.rate, cells.loc[(row, c.id)]) for c in cols if cells.loc[(row, c.id), "n"] > 0]
    x = np.array([p for p, _ in points], dtype=float)
    mean = np.array([factor * cell["mean"] for _, cell in points], dtype=float)
    std = np.array([factor * cell["std"] for _, cell in points], dtype=float)
    return x, mean, std


def _seeds(cells: pd.DataFrame) -> str:
    counts = sorted(set(cells.loc[cells["n"] > 0, "n"].astype(int)))
    if not counts:
        return "no seeds"
    return f"n = {counts[0]}" if len(counts) == 1 else f"n = {counts[0]}–{counts[-1]}"


def _legend(fig: Figure, axes, title: str | None, where: str = "right") -> None:
    """One legend for the figure, outside the panels: the union of the panels' entries."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    loc, ncol = ("outside right center", 1) if where == "right" else ("outside lower center", 2)
    fig.legend(list(entries.values()), list(entries), title=title, loc=loc, ncol=ncol, frameon=False, fontsize=9)


# ---------------------------------------------------------------------------------------------
# Learning curves


def pick_setting(selection: Selection, setting: str | None) -> Column:
    """The column named by `setting` (``asym0.4``, ``clean``, ``human-worse_label``, or
    ``dataset:tag``); by default the noisiest setting with rates, else the first column."""
    columns = list(selection.columns.values())
    if setting is None:
        rated = [c for c in columns if c.noise in RATED_TYPES]
        if rated:
            return max(rated, key=lambda c: c.rate)
        noisy = [c for c in columns if c.noise != "none"]
        return (noisy or columns)[0]
    matches = [c for c in columns if setting in (c.id, c.tag)]
    if not matches:
        raise UserError(f"--setting {setting!r} is not in the selected trials; "
                        + did_you_mean(setting, sorted({c.tag for c in columns})))
    if len(matches) > 1:
        raise UserError(f"--setting {setting!r} names a setting of several datasets; "
                        "say which: " + ", ".join(c.id for c in matches))
    return matches[0]


def learning_curves(selection: Selection, setting: str | None = None) -> Figure | None:
    """One panel per loss: accuracy curves and memorisation per epoch, mean over seeds."""
    column = pick_setting(selection, setting)
    ok = selection.ok[selection.ok["column"] == column.id]
    epochs = selection.epochs(ok["trial_id"])
    if epochs.empty:
        return None
    epochs = epochs.merge(ok[["trial_id", "row"]], on="trial_id")
    rows = [r for r in selection.row_order if r in set(epochs["row"])]
    fig, axes = _grid(len(rows), 3, (4.4, 3.3))
    for ax, row in zip(axes.flat, rows):
        part = epochs[epochs["row"] == row]
        seeds = part["trial_id"].nunique()
        for (key, label, style), color in zip(CURVES, CURVE_COLORS):
            if key not in part or part[key].isna().all():
                continue
            stats = part.groupby("epoch")[key].agg(["mean", "std"]).dropna(subset=["mean"])
            x, mean, std = stats.index.to_numpy(), 100 * stats["mean"].to_numpy(), 100 * stats["std"].to_numpy()
            ax.plot(x, mean, style, color=color, label=label, lw=1.6)
            ax.fill_between(x, mean - np.nan_to_num(std), mean + np.nan_to_num(std), color=color, alpha=0.12,
                            linewidth=0)
        ax.set_title(f"{row} ({seeds} seed{'s' if seeds != 1 else ''})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy or share of samples (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    _legend(fig, axes.flat, title=None, where="below")
    fig.suptitle(f"Learning curves, {column.dataset}, {_setting_name(column)}: mean ± std over seeds "
                 f"— {', '.join(sorted(set(ok['sweep'])))}", fontsize=10)
    return fig


def _setting_name(column: Column) -> str:
    if column.noise == "none":
        return "clean labels"
    if column.noise == "human":
        return f"human noise ({column.label})"
    return f"{column.group.lower()} noise {column.label}"


# ---------------------------------------------------------------------------------------------
# Drainage probabilities


def percent_histogram(ax, values: np.ndarray, edges: np.ndarray, fill: bool = True, **style) -> None:
    """The share of `values` in each bin of `edges`, in percent of all of them (the groups of a
    panel compare whatever their sizes), drawn as stairs."""
    counts, _ = np.histogram(values, bins=edges)
    ax.stairs(100 * counts / len(values), edges, fill=fill, **style)


def drainage_histograms(selection: Selection, setting: str | None = None, bins: int = 25) -> Figure | None:
    """One panel per (drainage loss, noisy setting): drainage probability of clean vs mislabeled
    training samples at the end of training, pooled over seeds."""
    ok = selection.ok
    if setting is not None:
        ok = ok[ok["column"] == pick_setting(selection, setting).id]
    ok = ok[ok["noise"] != "none"]
    samples = selection.samples(ok["trial_id"])
    if samples.empty:
        return None
    # each row's trial as a code into the categories: panels select trials, not strings per row
    trial_codes = samples["trial_id"].cat.codes.to_numpy()
    where = ok.drop_duplicates("trial_id").set_index("trial_id").reindex(samples["trial_id"].cat.categories)
    present = where.iloc[np.unique(trial_codes)]
    columns = [c for c in selection.columns.values() if c.id in set(present["column"])]
    panels = [(r, c) for r in selection.row_order for c in columns
              if ((present["row"] == r) & (present["column"] == c.id)).any()]
    probs_all = samples["drainage_prob"].to_numpy(dtype=float)
    noisy_all = samples["is_noisy"].to_numpy(dtype=bool)
    fig, axes = _grid(len(panels), 3, (4.2, 3.2))
    edges = np.linspace(0, 1, bins + 1)
    for ax, (row, column) in zip(axes.flat, panels):
        codes = np.flatnonzero((where["row"] == row).to_numpy() & (where["column"] == column.id).to_numpy())
        mask = np.isin(trial_codes, codes)
        for noisy, label, color in ((False, "clean labels", "tab:blue"), (True, "mislabeled", "tab:red")):
            probs = probs_all[mask & (noisy_all == noisy)]
            if len(probs):
                percent_histogram(ax, probs, edges, color=color, alpha=0.55, label=f"{label} (n = {len(probs)})")
        seeds = len(np.intersect1d(codes, trial_codes[mask]))
        ax.set_title(f"{row}, {column.dataset}, {_setting_name(column)}, {seeds} seed{'s' * (seeds != 1)}",
                     fontsize=9)
        ax.set_xlabel("drainage probability")
        ax.set_ylabel("% of the group's samples")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8, frameon=False)
        ax.grid(alpha=0.3)
    fig.suptitle("Drainage probability of the training samples at the end of training (seeds pooled) "
                 f"— {', '.join(sorted(set(ok['sweep'])))}", fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# Corruption severity

SEVERITY_PANELS = (("error", "final_test_acc", "error (%)"), ("ece", "final_test_ece", "ECE, 15 bins (%)"))


def severity_curves(selection: Selection) -> pd.DataFrame:
    """Per (row, column, metric, severity): mean and sample std over seeds of the trial's mean over
    corruptions; severity 0 is the clean test set (1 - final_test_acc, final_test_ece)."""
    ok = selection.ok
    cells = selection.corruptions(ok["trial_id"])
    if cells.empty:
        return pd.DataFrame()
    ok = ok[ok["trial_id"].isin(set(cells["trial_id"]))]
    per_trial = cells.groupby(["trial_id", "severity"])[["error", "ece"]].mean().reset_index()
    clean = pd.DataFrame({"trial_id": ok["trial_id"], "severity": 0,
                          "error": 1 - pd.to_numeric(ok["final_test_acc"]), "ece": pd.to_numeric(ok["final_test_ece"])})
    per_trial = pd.concat([clean, per_trial], ignore_index=True).merge(ok[["trial_id", "row", "column"]], on="trial_id")
    long = per_trial.melt(id_vars=["trial_id", "row", "column", "severity"], value_vars=["error", "ece"],
                          var_name="metric")
    return long.groupby(["row", "column", "metric", "severity"])["value"].agg(
        mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()


def corruption_severity(selection: Selection) -> Figure | None:
    """Error and ECE against corruption severity (0 = clean test set), one line per loss, one column
    of panels per noise setting; each point the mean over corruptions, then mean ± std over seeds."""
    curves = severity_curves(selection)
    if curves.empty:
        return None
    columns = [c for c in selection.columns.values() if c.id in set(curves["column"])]
    fig, axes = plt.subplots(len(SEVERITY_PANELS), len(columns), figsize=(4.4 * len(columns), 3.3 * len(SEVERITY_PANELS)),
                             squeeze=False, layout="constrained")
    colors = loss_colors(selection.row_order)
    for j, column in enumerate(columns):
        for i, (metric, _, label) in enumerate(SEVERITY_PANELS):
            ax = axes[i, j]
            for row in selection.row_order:
                part = curves[(curves["row"] == row) & (curves["column"] == column.id) & (curves["metric"] == metric)]
                if part.empty:
                    continue
                x, mean, std = part["severity"].to_numpy(), 100 * part["mean"].to_numpy(), 100 * part["std"].to_numpy()
                ax.plot(x, mean, marker="o", ms=3, color=colors[row], label=row)
                ax.fill_between(x, mean - np.nan_to_num(std), mean + np.nan_to_num(std), color=colors[row], alpha=0.12)
            ax.set_title(f"{column.dataset}, {_setting_name(column)}", fontsize=9)
            ax.set_xlabel("corruption severity (0 = clean test set)")
            ax.set_ylabel(label)
            ax.set_xticks(range(6))
            ax.grid(alpha=0.3)
    _legend(fig, axes.flat, "loss")
    seeds = ", ".join(sorted({f"n = {int(n)}" for n in curves["n"]}))
    fig.suptitle(f"Corrupted test images: mean over corruptions per severity, mean ± std over seeds ({seeds}) "
                 f"— {', '.join(selection.sweeps)}", fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# Writing


def critical_difference_figure(data: TableData) -> Figure | None:
    """Demšar's critical-difference diagram of a table's mean ranks (see cd_diagram, stats)."""
    from drainage_bench.analysis.cd_diagram import cd_diagram
    from drainage_bench.analysis.tables import add_ranks

    summary = add_ranks(data).ranks
    title = (f"{data.metric.title}: mean rank over {summary.n} columns, Friedman p = {summary.pvalue:.3g}, "
             f"Nemenyi CD (alpha = {summary.alpha:g})")
    return cd_diagram(summary, title)


def write_figure(fig: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Save `fig` as ``stem.png`` (150 dpi) and ``stem.pdf``; close it; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    # Every figure here lays itself out (layout="constrained"): the PNG's draw places the panels,
    # legends and titles; the PDF reuses those positions instead of laying out again, and neither
    # needs bbox_inches="tight" (which draws each figure twice).
    constrained = fig.get_layout_engine() is not None
    fig.savefig(paths[0], dpi=150, **({} if constrained else {"bbox_inches": "tight"}))
    if constrained:
        fig.set_layout_engine("none")
    fig.savefig(paths[1], **({} if constrained else {"bbox_inches": "tight"}))
    plt.close(fig)
    return paths


def default_out_dir(root: str | Path, sweeps: list[str]) -> Path:
    """``<root>/<sweep>/figures`` for one sweep, ``<root>/figures/<a>+<b>`` for several."""
    return Path(root) / sweeps[0] / "figures" if len(sweeps) == 1 else Path(root) / "figures" / "+".join(sweeps)


def figure_plan(selection: Selection, metric: str | None = None,
                setting: str | None = None) -> dict[str, tuple[Callable[[], Figure | None], str]]:
    """stem -> (a function that draws the figure or returns None, why it may be missing), for
    every figure `make_figures` writes. Bad options fail here, before anything is drawn."""
    metric_ = get_metric(metric or selection.metric)
    table = aggregate(selection, metric_)  # a metric no selected trial has fails here, before any figure
    column = pick_setting(selection, setting)
    plan = {
        f"{metric_.name}_vs_noise": (lambda: accuracy_vs_noise(table), "no noise type with rates"),
        f"learning_curves_{column.tag}": (lambda: learning_curves(selection, column.id), "no per-epoch records"),
        "drainage_probability": (lambda: drainage_histograms(selection, setting),
                                 "no drainage run with per-sample records under noise"),
        f"critical_difference_{metric_.name}": (lambda: critical_difference_figure(table),
                                                 "fewer than 3 losses or 2 columns with a value for every loss"),
        "corruption_severity": (lambda: corruption_severity(selection), "no trial evaluated corruptions"),
    }
    from drainage_bench.analysis.openset_plots import openset_figures  # it imports this module

    plan.update(openset_figures(selection))
    return plan


Plan = list[tuple[str, Callable[[], Figure | None], str]]  # (stem, draw, why it may be missing)


def _draw(plan: Plan, i: int, out_dir: Path) -> tuple[list[Path], str | None]:
    stem, draw, why = plan[i]
    fig = draw()
    if fig is None:
        return [], f"{stem}: not drawn ({why})"
    return write_figure(fig, out_dir, stem), None


_WORKER: tuple[Plan, Path] | None = None  # a forked worker's plan (fork copies it: nothing pickled)


def _start_worker(plan: Plan, out_dir: Path) -> None:
    global _WORKER
    _WORKER = (plan, out_dir)


def _draw_in_worker(i: int) -> tuple[list[Path], str | None]:
    plan, out_dir = _WORKER
    return _draw(plan, i, out_dir)


def default_jobs() -> int:
    """Processes that draw figures: the CPUs this process may use. Drawing runs in forked workers
    (the selection is shared, not copied), so only where fork is safe: Linux; elsewhere one."""
    if not sys.platform.startswith("linux"):
        return 1
    return len(os.sched_getaffinity(0))


def _draw_in_processes(plan: Plan, out_dir: Path, jobs: int) -> list[tuple[list[Path], str | None]] | None:
    """`_draw` of every figure in `jobs` forked processes; None where processes cannot be made
    or one died (no semaphores in a sandbox, the OOM killer): the caller draws them here."""
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
                                 initargs=(plan, out_dir)) as pool:
            return list(pool.map(_draw_in_worker, range(len(plan))))
    except (OSError, NotImplementedError, BrokenProcessPool):
        return None


def make_figures(selection: Selection, out_dir: str | Path, metric: str | None = None,
                 setting: str | None = None, jobs: int | None = None) -> tuple[list[Path], list[str]]:
    """Every figure the selection allows: (files written, notes on figures left out), in the
    plan's order. Figures are independent: with ``jobs > 1`` they are drawn and saved by that many
    forked processes at once (matplotlib's drawing is single-threaded Python)."""
    plan = [(stem, draw, why) for stem, (draw, why) in figure_plan(selection, metric, setting).items()]
    jobs = min(default_jobs() if jobs is None else max(1, jobs), len(plan))
    out_dir = Path(out_dir)
    done = _draw_in_processes(plan, out_dir, jobs) if jobs > 1 else None
    if done is None:
        done = [_draw(plan, i, out_dir) for i in range(len(plan))]
    paths = [p for written, _ in done for p in written]
    return paths, [note for _, note in done if note]

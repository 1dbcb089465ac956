"""Open-set figures from the per-sample scores of open-set trials (results/<sweep>/openset/).

- `roc_curves`: one panel per score (MSP, max logit, p_d), one line per loss: the ROC curve
  (unknown positive: TPR = share of unknowns rejected, FPR = share of knowns rejected), each
  trial's curve interpolated on a common FPR grid, then the mean over the trials (splits x
  seeds) with a band of ± one standard deviation; the legend gives the mean AUROC.
- `score_histograms`: one panel per loss: the distribution of its main score (p_d for drainage
  models, else the negated MSP) for known vs unknown test samples, pooled over the trials,
  each group normalised to 100%.
- `relabel_histograms`: trials with ``openset_unknown_train = "relabel"``: the drainage
  probability at the end of training of the training samples of the known classes and of the
  unknown classes' samples (relabelled at random), and of the known and unknown test samples.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from drainage_bench.analysis.plots import _grid, loss_colors, percent_histogram
from drainage_bench.analysis.tables import Selection
from drainage_bench.catalog import OPENSET_SCORES

FPR_GRID = np.linspace(0.0, 1.0, 201)
SCORE_AXIS = {"msp": "negated max softmax probability", "maxlogit": "negated max logit", "pd": "drainage probability p_d"}


def _openset_trials(selection: Selection) -> pd.DataFrame:
    ok = selection.ok
    return ok[ok["openset"].astype(str) != ""] if "openset" in ok else ok.iloc[0:0]


def load_scores(selection: Selection, trials: pd.DataFrame) -> pd.DataFrame:
    """The per-sample open-set rows of `trials`, with trial_id and the table row."""
    scores = selection.openset(trials["trial_id"])
    return scores if scores.empty else with_rows(scores, trials)


def with_rows(frame: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` (per-sample records) whose trial is in `trials`, each with its table
    row (`row`); matched by trial_id (a categorical column maps only its categories)."""
    rows = frame["trial_id"].map(trials.drop_duplicates("trial_id").set_index("trial_id")["row"])
    return frame.assign(row=rows)[rows.notna().to_numpy()]


def _runs(part: pd.DataFrame) -> str:
    n = part["trial_id"].nunique()
    return f"{n} run{'s' * (n != 1)}"


def _mean_roc(part: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
    from sklearn.metrics import auc, roc_curve  # 0.5 s of imports: only where there are open-set trials

    curves, areas = [], []
    for _, trial in part.groupby("trial_id"):
        unknown = trial["is_unknown"].to_numpy(bool)
        score = trial[column].to_numpy(float)
        fpr, tpr, _ = roc_curve(unknown, score)
        curves.append(np.interp(FPR_GRID, fpr, tpr))
        areas.append(auc(fpr, tpr))  # the area of this curve: roc_auc_score's value (metrics.openset.auroc)
    curves = np.array(curves)
    return curves.mean(0), curves.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(FPR_GRID)), areas


def roc_curves(selection: Selection, scores: pd.DataFrame | None = None) -> Figure | None:
    """One panel per score, one mean ROC curve per loss (see the module docstring)."""
    scores = load_scores(selection, _openset_trials(selection)) if scores is None else scores
    if scores.empty:
        return None
    rows = [r for r in selection.row_order if r in set(scores["row"])]
    colors = loss_colors(selection.row_order)
    names = [s for s in OPENSET_SCORES if scores[f"score_{s}"].notna().any()]
    fig, axes = _grid(len(names), 3, (4.2, 3.9))
    for ax, name in zip(axes.flat, names):
        column = f"score_{name}"
        # a trial's curve only where all its scores are finite (as its metrics: metrics.openset)
        partial = scores.loc[~np.isfinite(scores[column].to_numpy(float)), "trial_id"].unique()
        usable = ~scores["trial_id"].isin(partial)
        for row in rows:
            part = scores[(scores["row"] == row) & usable]
            if part.empty:
                continue
            mean, std, areas = _mean_roc(part, column)
            ax.plot(FPR_GRID, mean, color=colors[row], lw=1.6,
                    label=f"{row}: AUROC {100 * np.mean(areas):.2f} (n = {len(areas)})")
            ax.fill_between(FPR_GRID, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=colors[row],
                            alpha=0.15, linewidth=0)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set_title(f"score: {OPENSET_SCORES[name]}")
        ax.set_xlabel("knowns rejected (FPR)")
        ax.set_ylabel("unknowns rejected (TPR)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.legend(fontsize=7, frameon=False, loc="lower right")
        ax.grid(alpha=0.3)
    fig.suptitle("Open-set ROC (unknown positive): mean ± std over splits x seeds — "
                 + ", ".join(sorted(set(_openset_trials(selection)["sweep"]))), fontsize=10)
    return fig


def score_histograms(selection: Selection, scores: pd.DataFrame | None = None, bins: int = 30) -> Figure | None:
    """One panel per loss: its main score (p_d, else negated MSP), known vs unknown test samples."""
    scores = load_scores(selection, _openset_trials(selection)) if scores is None else scores
    if scores.empty:
        return None
    rows = [r for r in selection.row_order if r in set(scores["row"])]
    fig, axes = _grid(len(rows), 4, (3.8, 3.0))
    for ax, row in zip(axes.flat, rows):
        part = scores[scores["row"] == row]
        name = "pd" if part["score_pd"].notna().all() else "msp"
        values = part[f"score_{name}"].to_numpy(float)
        edges = np.histogram_bin_edges(values, bins)  # min to max; a constant score: its value ± 0.5
        for unknown, label, color in ((False, "known", "tab:blue"), (True, "unknown", "tab:red")):
            v = values[part["is_unknown"].to_numpy(bool) == unknown]
            if len(v):
                percent_histogram(ax, v, edges, color=color, alpha=0.55, label=f"{label} (n = {len(v)})")
        ax.set_title(f"{row} ({_runs(part)})", fontsize=9)
        ax.set_xlabel(SCORE_AXIS[name])
        ax.set_ylabel("% of the group's test samples")
        ax.legend(fontsize=7, frameon=False)
        ax.grid(alpha=0.3)
    fig.suptitle("Open-set score of known vs unknown test samples (higher = more unknown; runs pooled)", fontsize=10)
    return fig


def relabel_histograms(selection: Selection, scores: pd.DataFrame | None = None, bins: int = 25) -> Figure | None:
    """Drainage probability of known / relabelled-unknown training samples and known / unknown
    test samples, for drainage trials with ``openset_unknown_train = "relabel"`` (one panel per loss)."""
    trials = _openset_trials(selection)
    if "openset_unknown_train" not in trials:
        return None
    trials = trials[trials["openset_unknown_train"] == "relabel"]
    scores = load_scores(selection, trials) if scores is None else scores[scores["trial_id"].isin(trials["trial_id"])]
    samples = selection.samples(trials["trial_id"])
    if scores.empty or samples.empty or "is_relabelled" not in samples or scores["score_pd"].isna().all():
        return None
    samples = with_rows(samples, trials)
    rows = [r for r in selection.row_order if r in set(samples["row"])]
    fig, axes = _grid(len(rows), 2, (5.2, 3.6))
    edges = np.linspace(0, 1, bins + 1)
    for ax, row in zip(axes.flat, rows):
        train, test = samples[samples["row"] == row], scores[scores["row"] == row]
        relabelled, unknown = train["is_relabelled"].to_numpy(bool), test["is_unknown"].to_numpy(bool)
        groups = (  # values, label, colour, filled (training samples) or outlined (test samples)
            (train["drainage_prob"].to_numpy(float)[~relabelled], "train: known classes", "tab:blue", True),
            (train["drainage_prob"].to_numpy(float)[relabelled], "train: unknown classes, relabelled", "tab:red",
             True),
            (test["score_pd"].to_numpy(float)[~unknown], "test: known classes", "navy", False),
            (test["score_pd"].to_numpy(float)[unknown], "test: unknown classes", "darkred", False),
        )
        for values, label, color, filled in groups:
            if len(values):
                percent_histogram(ax, values, edges, fill=filled, color=color, alpha=0.5 if filled else 1.0, lw=1.6,
                                  label=f"{label} (n = {len(values)}, mean {values.mean():.2f})")
        ax.set_title(f"{row} ({_runs(train)})", fontsize=9)
        ax.set_xlabel("drainage probability at the end of training")
        ax.set_ylabel("% of the group's samples")
        ax.set_yscale("log")
        ax.legend(fontsize=7, frameon=False)
        ax.grid(alpha=0.3)
    fig.suptitle("Class ambiguity: unknown classes' training samples relabelled at random — do they drain?", fontsize=10)
    return fig


def openset_figures(selection: Selection) -> dict[str, tuple[Callable[[], Figure | None], str]]:
    """The open-set figures of `make_figures`, each as (a function that draws it, why it may be
    missing); none when the selection has no open-set trial. The scores are read here, once."""
    trials = _openset_trials(selection)
    if trials.empty:
        return {}
    scores = load_scores(selection, trials)
    return {
        "openset_roc": (lambda: roc_curves(selection, scores), "no per-sample open-set scores"),
        "openset_score_histograms": (lambda: score_histograms(selection, scores), "no per-sample open-set scores"),
        "openset_relabel": (lambda: relabel_histograms(selection, scores),
                            "no drainage trial with openset_unknown_train=relabel"),
    }

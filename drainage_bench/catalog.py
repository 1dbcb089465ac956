"""Plain data that both `sweeps/` and `analysis/` read: the metric catalogue and noise groups.

Nothing here imports torch, Ray or Optuna (the analysis layer must stay cheap to import).
A metric names its trial-record column, its title, its direction (``higher_is_better``),
whether it is a fraction shown in percent (``percent``; NLL is not) and where it applies.
"""
from __future__ import annotations

from dataclasses import dataclass

from drainage_bench.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Metric:
    name: str
    column: str           # the trial-record column
    title: str
    higher_is_better: bool = True
    percent: bool = True  # a fraction, shown x100 with a % sign
    applies: str = "every trial"
    note: str = ""        # a footnote every table of this metric carries
    short: str = ""       # a column header where a table shows several metrics side by side


CORRUPTION_GROUPS = ("noise", "blur", "weather", "digital")  # the groups of Hendrycks & Dietterich 2019

METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("final_test_acc", "final_test_acc", "final test accuracy"),
    Metric("test_acc_at_best_val", "test_acc_at_best_val", "test accuracy at the best validation epoch",
           applies="trials with a validation split"),
    Metric("best_val_acc", "best_val_acc", "best validation accuracy", applies="trials with a validation split"),
    Metric("final_val_acc", "final_val_acc", "final validation accuracy", applies="trials with a validation split"),
    Metric("best_test_acc", "best_test_acc", "best test-epoch accuracy (selected on the test set: optimistic)",
           note="Best test epoch: each trial's highest test accuracy over its evaluated epochs, an epoch chosen by "
                "looking at the test set, so it overstates what a model picked without the test set achieves; "
                "many papers report it, compare it only with numbers selected the same way."),
    Metric("last10_test_acc", "last10_test_acc", "mean test accuracy over the last 10 epochs",
           note="Last 10: each trial's mean test accuracy over its evaluated epochs among the last 10."),
    Metric("final_imagenet_acc", "final_imagenet_acc",
           "final accuracy on the ILSVRC2012 validation images of WebVision's 50 classes",
           applies="webvision trials with imagenet/ in the data root"),
    Metric("drainage_clean", "final_drainage_share_clean",
           "share of clean training samples drained", higher_is_better=False, applies="drainage trials"),
    Metric("drainage_noisy", "final_drainage_share_noisy", "share of mislabeled training samples drained",
           applies="drainage trials"),
    # Calibration (metrics/calibration.py), every trial; drainage models on the closed C-class softmax.
    Metric("final_test_nll", "final_test_nll", "final test NLL", higher_is_better=False, percent=False),
    Metric("final_test_ece", "final_test_ece", "final test ECE (15 bins)", higher_is_better=False),
    Metric("test_nll_at_best_val", "test_nll_at_best_val", "test NLL at the best validation epoch",
           higher_is_better=False, percent=False, applies="trials with a validation split"),
    Metric("test_ece_at_best_val", "test_ece_at_best_val", "test ECE at the best validation epoch",
           higher_is_better=False, applies="trials with a validation split"),
    # Corrupted test sets (trainer/corruptions.py): means over every corruption x severity cell, or a group's.
    *(Metric(f"corruption_{key}{suffix}", f"corruption_{key}{suffix}",
             f"{title} on corrupted test images{' (' + group + ')' if group else ''}",
             higher_is_better=False, percent=key != "nll", applies="trials with corruptions set")
      for key, title in (("error", "error"), ("nll", "NLL"), ("ece", "ECE"))
      for group, suffix in (("", ""), *((g, f"_{g}") for g in CORRUPTION_GROUPS))),
)}
# Open-set trials (trainer/openset.py, formulas in metrics/openset.py): one metric per (formula,
# score); every score is oriented higher = more unknown.
OPENSET_SCORES = {"msp": "MSP", "maxlogit": "max logit", "pd": "p_d"}
OPENSET_SCORE_APPLIES = {"msp": "open-set trials", "maxlogit": "open-set trials", "pd": "open-set drainage trials"}
_OPENSET_FORMULAS = (  # name, title, higher_is_better, short
    ("auroc", "open-set AUROC (unknown positive)", True, "AUROC"),
    ("aupr_in", "open-set AUPR-in (known positive)", True, "AUPR-in"),
    ("aupr_out", "open-set AUPR-out (unknown positive)", True, "AUPR-out"),
    ("unknown_accepted_at_95known", "unknowns accepted at 95% of knowns accepted (FPR@95%TPR, known positive)",
     False, "unknown acc. @95% known"),
    ("oscr", "open-set classification rate (OSCR)", True, "OSCR"),
)
METRICS.update({m.name: m for m in (
    *(Metric(f"openset_{name}_{score}", f"openset_{name}_{score}", f"{title}, {label}", better,
             applies=OPENSET_SCORE_APPLIES[score], short=f"{short} {label}")
      for name, title, better, short in _OPENSET_FORMULAS for score, label in OPENSET_SCORES.items()),
    Metric("openset_closed_acc", "openset_closed_acc", "closed-set accuracy on the known classes",
           applies="open-set trials", short="closed-set acc."),
    Metric("openset_drain_rejects_unknown", "openset_drain_rejects_unknown",
           "unknowns rejected by the drainage node (z_d beats every class)", applies="open-set drainage trials",
           short="unknowns drained"),
    Metric("openset_drain_rejects_known", "openset_drain_rejects_known",
           "knowns rejected by the drainage node (false rejections)", higher_is_better=False,
           applies="open-set drainage trials", short="knowns drained"),
)})
# The names sweep specs use for the same metrics.
METRIC_ALIASES = {"final_drainage_share_clean": "drainage_clean", "final_drainage_share_noisy": "drainage_noisy"}


def register_metric(metric: Metric) -> Metric:
    """Add a metric to the catalogue (a feature module calls this where its metric is defined)."""
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    name = METRIC_ALIASES.get(name, name)
    if name not in METRICS:
        raise UserError(f"unknown metric {name!r}; " + did_you_mean(name, METRICS))
    return METRICS[name]


NOISE_ORDER = ("none", "sym", "asym", "instance", "human", "file")
NOISE_GROUPS = {"none": "Clean", "sym": "Symmetric", "asym": "Asymmetric",
                "instance": "Instance-dependent", "human": "Human", "file": "Label file"}
RATED_TYPES = ("sym", "asym", "instance")  # the noise types whose text form carries a rate

# The loss registry's names, in its order (CE first, the drainage loss last), with their table
# names: a plain copy of trainer/losses.py's `display` attributes, so that tables order and name
# rows without importing torch (tests/test_losses.py checks the copy against the registry). A
# loss missing here still shows: under its record's display name, after these.
LOSS_DISPLAY = {
    "ce": "CE", "fl": "FL", "mae": "MAE", "gce": "GCE", "sce": "SCE", "nce": "NCE", "rce": "RCE", "nfl": "NFL",
    "nce_rce": "NCE+RCE", "nce_mae": "NCE+MAE", "nfl_rce": "NFL+RCE", "nce_agce": "NCE+AGCE", "nce_aul": "NCE+AUL",
    "nce_ael": "NCE+AEL", "anl_ce": "ANL-CE", "anl_fl": "ANL-FL", "anl_ce_er": "ANL-CE-ER", "ls": "LS",
    "drainage": "Drainage",
}

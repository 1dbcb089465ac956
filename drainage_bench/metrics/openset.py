"""Open-set recognition metrics on per-sample scores (numpy + scikit-learn; no torch).

Every score is oriented so that HIGHER means "more unknown" (``score_msp`` is the negated maximum
softmax probability, ``score_maxlogit`` the negated maximum logit, ``score_pd`` the drainage
probability). A sample is *accepted* (taken as known) at threshold t when ``score <= t`` and
*rejected* when ``score > t``. ``is_unknown`` is a boolean array; ``correct`` says, for known
samples, whether the closed-set prediction over the known classes is right.

Ties between a known and an unknown score count one half wherever pairs are compared (AUROC,
OSCR): it is the area under the curve drawn through one point per *distinct* threshold, whose
segments are diagonal where tied samples enter together. (Published OSCR codes differ here:
sorting and stepping one sample at a time makes the result depend on the sort order of ties.)
"""
from __future__ import annotations

import math

import numpy as np

from drainage_bench.catalog import OPENSET_SCORES

TPR_LEVEL_PERCENT = 95


def _split(score, is_unknown) -> tuple[np.ndarray, np.ndarray]:
    score = np.asarray(score, dtype=float)
    is_unknown = np.asarray(is_unknown, dtype=bool)
    return score[~is_unknown], score[is_unknown]


def auroc(score, is_unknown) -> float:
    """Area under the ROC curve, positive class = UNKNOWN:
    ``P(s_u > s_k) + 1/2 P(s_u = s_k)`` for a random unknown u and a random known k
    (``sklearn.metrics.roc_auc_score(is_unknown, score)``). 0.5 is chance, 1 perfect."""
    known, unknown = _split(score, is_unknown)
    if not len(known) or not len(unknown):
        return math.nan
    from sklearn.metrics import roc_auc_score  # sklearn takes 0.5 s to import: only when needed

    return float(roc_auc_score(np.asarray(is_unknown, dtype=bool), np.asarray(score, dtype=float)))


def aupr_in(score, is_unknown) -> float:
    """Average precision with KNOWN as the positive class, ranked by ``-score`` (most known first):
    ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds (sklearn's average_precision_score;
    tied scores enter at one threshold). Chance level is the share of known samples."""
    is_unknown = np.asarray(is_unknown, dtype=bool)
    if is_unknown.all() or not is_unknown.any():
        return math.nan
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(~is_unknown, -np.asarray(score, dtype=float)))


def aupr_out(score, is_unknown) -> float:
    """Average precision with UNKNOWN as the positive class, ranked by ``score`` (most unknown
    first); as `aupr_in` otherwise. Chance level is the share of unknown samples."""
    is_unknown = np.asarray(is_unknown, dtype=bool)
    if is_unknown.all() or not is_unknown.any():
        return math.nan
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(is_unknown, np.asarray(score, dtype=float)))


def unknown_accepted_at_95_known(score, is_unknown) -> float:
    """The classic "FPR at 95% TPR" with KNOWN as the positive class: the share of UNKNOWN
    samples accepted when 95% of the known samples are accepted (lower is better).

    The threshold t is the smallest known score with at least 95% of known scores <= t
    (``t = sorted(known)[ceil(0.95 n_known) - 1]``); the result is ``mean(unknown <= t)``, so an
    unknown tied with t counts as accepted.
    """
    known, unknown = _split(score, is_unknown)
    if not len(known) or not len(unknown):
        return math.nan
    rank = -(-TPR_LEVEL_PERCENT * len(known) // 100)  # ceil(0.95 n) in integers
    threshold = np.sort(known)[rank - 1]
    return float(np.mean(unknown <= threshold))


def oscr(score, is_unknown, correct) -> float:
    """Open-Set Classification Rate (Dhamija, Günther & Boult, NeurIPS 2018): the area under
    CCR(t) against FPR(t), where at threshold t (accept iff score <= t)

        CCR(t) = #{known, correctly classified, accepted} / #known
        FPR(t) = #{unknown, accepted} / #unknown

    with one point per distinct threshold from (0, 0) to (1, closed-set accuracy), joined by
    straight lines. That area equals the pair count
    ``(1 / (n_k n_u)) sum_{i known & correct} sum_{j unknown} ([s_i < s_j] + 1/2 [s_i = s_j])``,
    which is how it is computed. 1 is perfect; it is at most the closed-set accuracy.
    Numbers are not bit-comparable with ARPL's or Vaze et al.'s ``compute_oscr``, whose curve is
    offset by one threshold and ends at (1, 1) (0.4835 there against 0.487 here and by a
    brute-force pair count on one 90-sample example, no ties).
    """
    known, unknown = _split(score, is_unknown)
    is_unknown = np.asarray(is_unknown, dtype=bool)
    hits = np.asarray(correct, dtype=bool)[~is_unknown]
    if not len(known) or not len(unknown):
        return math.nan
    u = np.sort(unknown)
    s = known[hits]
    below = np.searchsorted(u, s, side="left")    # unknowns < s_i
    upto = np.searchsorted(u, s, side="right")    # unknowns <= s_i
    wins = (len(u) - upto) + 0.5 * (upto - below)  # unknowns > s_i, ties half
    return float(wins.sum() / (len(known) * len(u)))


def closed_set_accuracy(pred, known_label, is_unknown) -> float:
    """Share of KNOWN test samples whose prediction over the known classes is their label."""
    is_unknown = np.asarray(is_unknown, dtype=bool)
    if is_unknown.all():
        return math.nan
    return float(np.mean(np.asarray(pred)[~is_unknown] == np.asarray(known_label)[~is_unknown]))


def drainage_rejection(drained, is_unknown) -> tuple[float, float]:
    """Under the open-drainage decision (reject iff z_d beats every class logit): (share of
    unknown samples rejected, share of known samples rejected, i.e. the false rejections)."""
    drained = np.asarray(drained, dtype=bool)
    is_unknown = np.asarray(is_unknown, dtype=bool)
    rate = lambda mask: float(drained[mask].mean()) if mask.any() else math.nan  # noqa: E731
    return rate(is_unknown), rate(~is_unknown)


SCORE_METRICS = {
    "auroc": lambda s, u, c: auroc(s, u),
    "aupr_in": lambda s, u, c: aupr_in(s, u),
    "aupr_out": lambda s, u, c: aupr_out(s, u),
    "unknown_accepted_at_95known": lambda s, u, c: unknown_accepted_at_95_known(s, u),
    "oscr": oscr,
}


def openset_summary(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """The trial record's open-set numbers from the per-sample scores of one trial:
    ``openset_<metric>_<score>`` for every metric of SCORE_METRICS and every score present
    (``pd`` for drainage models only), ``openset_closed_acc``, and for drainage models
    ``openset_drain_rejects_unknown`` / ``openset_drain_rejects_known``."""
    is_unknown = np.asarray(scores["is_unknown"], dtype=bool)
    correct = np.asarray(scores["pred"]) == np.asarray(scores["known_label"])
    out = {"openset_closed_acc": closed_set_accuracy(scores["pred"], scores["known_label"], is_unknown),
           "openset_n_known": int((~is_unknown).sum()), "openset_n_unknown": int(is_unknown.sum())}
    for name in OPENSET_SCORES:
        score = np.asarray(scores[f"score_{name}"], dtype=float)
        if np.isnan(score).all():
            continue  # p_d of a model without a drainage node
        finite = np.isfinite(score).all()  # else a diverged model: its metrics are NaN
        for metric, formula in SCORE_METRICS.items():
            out[f"openset_{metric}_{name}"] = formula(score, is_unknown, correct) if finite else math.nan
    if not np.isnan(np.asarray(scores["score_pd"], dtype=float)).all():
        out["openset_drain_rejects_unknown"], out["openset_drain_rejects_known"] = \
            drainage_rejection(scores["drained"], is_unknown)
    return out

"""Open-set metrics against values worked out by hand, ties included, and against an independent
construction of the OSCR curve (property test)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drainage_bench.catalog import get_metric
from drainage_bench.metrics.openset import (
    aupr_in, aupr_out, auroc, closed_set_accuracy, drainage_rejection, openset_summary, oscr,
    unknown_accepted_at_95_known)

# 4 known + 3 unknown samples; higher score = more unknown. Known 0.4 twice and unknown 0.4 tie.
KNOWN = [0.1, 0.4, 0.4, 0.8]
UNKNOWN = [0.4, 0.9, 0.2]
SCORE = np.array(KNOWN + UNKNOWN)
IS_UNKNOWN = np.array([False] * 4 + [True] * 3)
CORRECT = np.array([True, True, False, True, False, False, False])  # the known 0.4 at index 2 is misclassified


def test_auroc_counts_pairs_with_ties_as_one_half() -> None:
    # unknown 0.4 beats known 0.1 (1), ties both 0.4 (0.5 + 0.5), loses to 0.8: 2
    # unknown 0.9 beats all four: 4;  unknown 0.2 beats 0.1 only: 1  ->  7 of 12 pairs
    assert auroc(SCORE, IS_UNKNOWN) == pytest.approx(7 / 12)


def test_oscr_by_hand_with_a_tie_and_a_misclassified_known() -> None:
    # Correct knowns 0.1, 0.4, 0.8 against unknowns 0.4, 0.9, 0.2:
    # 0.1 < all three: 3;  0.4 < 0.9 (1) and = 0.4 (0.5): 1.5;  0.8 < 0.9: 1  ->  5.5 / (4 * 3)
    # The same from the curve (accept iff score <= t), points per distinct t:
    # (0,0) (0,1/4) (1/3,1/4) (2/3,1/2) (2/3,3/4) (1,3/4): trapezoids 0 + 1/12 + 1/8 + 0 + 1/4 = 11/24
    assert oscr(SCORE, IS_UNKNOWN, CORRECT) == pytest.approx(5.5 / 12) == pytest.approx(11 / 24)


def test_unknowns_accepted_at_95_percent_of_knowns_accepted() -> None:
    # ceil(0.95 * 4) = 4 knowns must be accepted: t = 0.8; unknowns <= 0.8: 0.4 and 0.2 -> 2/3
    assert unknown_accepted_at_95_known(SCORE, IS_UNKNOWN) == pytest.approx(2 / 3)
    # 20 knowns 1..20: ceil(19.0) = 19 -> t = 19; an unknown tied at 19 is accepted, 19.5 is not
    known = np.arange(1.0, 21.0)
    score = np.concatenate([known, [19.0, 19.5]])
    flags = np.array([False] * 20 + [True, True])
    assert unknown_accepted_at_95_known(score, flags) == pytest.approx(1 / 2)
    # 10 knowns 1..10: ceil(9.5) = 10 must be accepted -> t = 10 (a floor would give t = 9); the
    # unknowns at 9.5 and 10 are accepted, 10.5 is not -> 2/3
    score = np.concatenate([np.arange(1.0, 11.0), [9.5, 10.0, 10.5]])
    flags = np.array([False] * 10 + [True] * 3)
    assert unknown_accepted_at_95_known(score, flags) == pytest.approx(2 / 3)


def test_aupr_in_and_out_by_hand() -> None:
    # out (unknown positive, by score descending), one point per distinct threshold:
    # >=0.9: P 1, R 1/3;  >=0.8: P 1/2, R 1/3;  >=0.4: P 2/5, R 2/3;  >=0.2: P 1/2, R 1;  >=0.1: R 1
    # AP = 1/3 * 1 + 1/3 * 2/5 + 1/3 * 1/2 = 19/30
    assert aupr_out(SCORE, IS_UNKNOWN) == pytest.approx(19 / 30)
    # in (known positive, by score ascending):
    # <=0.1: P 1, R 1/4;  <=0.2: P 1/2, R 1/4;  <=0.4: P 3/5, R 3/4;  <=0.8: P 2/3, R 1
    # AP = 1/4 + 1/2 * 3/5 + 1/4 * 2/3 = 43/60
    assert aupr_in(SCORE, IS_UNKNOWN) == pytest.approx(43 / 60)


def test_all_scores_tied_give_chance() -> None:
    score = np.zeros(7)
    assert auroc(score, IS_UNKNOWN) == 0.5
    assert oscr(score, IS_UNKNOWN, CORRECT) == pytest.approx(0.5 * 3 / 4)  # half of the accuracy
    assert unknown_accepted_at_95_known(score, IS_UNKNOWN) == 1.0


def test_closed_set_accuracy_and_drainage_rejection() -> None:
    pred = np.array([0, 1, 2, 3, 0, 0, 0])
    known_label = np.array([0, 1, 1, 3, -1, -1, -1])
    assert closed_set_accuracy(pred, known_label, IS_UNKNOWN) == 0.75
    drained = np.array([False, True, False, False, True, True, False])
    assert drainage_rejection(drained, IS_UNKNOWN) == (pytest.approx(2 / 3), 0.25)


def test_summary_names_every_metric_in_the_catalogue_and_skips_pd_without_drainage() -> None:
    scores = {"is_unknown": IS_UNKNOWN, "pred": np.array([0, 1, 2, 3, 0, 0, 0]),
              "known_label": np.array([0, 1, 1, 3, -1, -1, -1]), "score_msp": SCORE, "score_maxlogit": -SCORE,
              "score_pd": np.full(7, np.nan), "drained": np.zeros(7, dtype=bool)}
    out = openset_summary(scores)
    assert out["openset_auroc_msp"] == pytest.approx(7 / 12)
    assert out["openset_oscr_msp"] == pytest.approx(11 / 24)
    assert out["openset_auroc_maxlogit"] == pytest.approx(5 / 12)  # reversed order: 1 - 7/12
    assert not any(k.endswith("_pd") for k in out) and "openset_drain_rejects_unknown" not in out
    for name in out:
        if name.startswith("openset_") and not name.startswith("openset_n_"):
            assert get_metric(name).column == name
    assert not get_metric("openset_unknown_accepted_at_95known_pd").higher_is_better
    diverged = openset_summary({**scores, "score_msp": np.where(np.arange(7) == 0, np.nan, SCORE)})
    assert np.isnan(diverged["openset_auroc_msp"])  # one NaN score: NaN, not a silently missing metric
    assert diverged["openset_auroc_maxlogit"] == pytest.approx(5 / 12)
    with_pd = openset_summary({**scores, "score_pd": SCORE, "drained": scores["pred"] == 0})
    assert with_pd["openset_auroc_pd"] == pytest.approx(7 / 12)
    assert with_pd["openset_drain_rejects_unknown"] == 1.0 and with_pd["openset_drain_rejects_known"] == 0.25


def _oscr_by_curve(score, is_unknown, correct) -> float:
    """Independent construction: the CCR/FPR points at every distinct threshold, trapezoids."""
    points = [(0.0, 0.0)]
    for t in np.unique(score):
        accepted = score <= t
        points.append((accepted[is_unknown].mean(), (accepted & correct & ~is_unknown).sum() / (~is_unknown).sum()))
    x, y = np.array(points).T
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.booleans()), min_size=2, max_size=30))
def test_oscr_is_the_area_under_its_curve_and_auroc_when_all_knowns_are_right(rows) -> None:
    score = np.array([r[0] for r in rows], dtype=float)  # few distinct values: many ties
    is_unknown = np.array([r[1] for r in rows])
    correct = np.array([r[2] for r in rows]) & ~is_unknown
    if is_unknown.all() or not is_unknown.any():
        assert math.isnan(oscr(score, is_unknown, correct))
        return
    assert oscr(score, is_unknown, correct) == pytest.approx(_oscr_by_curve(score, is_unknown, correct))
    assert oscr(score, is_unknown, ~is_unknown) == pytest.approx(auroc(score, is_unknown))

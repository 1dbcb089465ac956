"""Paired differences, ranks, the Friedman test and the Nemenyi critical difference, against values
worked out by hand (and Demšar 2006's table of q_alpha); the test-selected summaries of the trainer."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from drainage_bench.analysis.stats import (
    critical_difference,
    nemenyi_q,
    paired_by_seed,
    paired_difference,
    rank_matrix,
    rank_summary,
)
from drainage_bench.catalog import get_metric

T_975_2 = 4.302653  # t_{0.975, 2}, from a printed t table


def test_paired_difference_of_1_2_3_by_hand():
    # d = [1, 2, 3]: mean 2, sd sqrt((1 + 0 + 1) / 2) = 1, half-width 4.302653 * 1 / sqrt(3) = 2.48414
    d = paired_difference([11, 12, 13], [10, 10, 10])
    assert (d.n, d.mean, d.sd) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert d.low == pytest.approx(2 - 2.48414, abs=1e-5) and d.high == pytest.approx(2 + 2.48414, abs=1e-5)
    assert not d.excludes_zero  # [-0.484, 4.484] holds 0
    shifted = paired_difference([2, 3, 4], [0, 0, 0])  # [0.516, 5.484]
    assert shifted.low == pytest.approx(3 - T_975_2 / math.sqrt(3), abs=1e-5) and shifted.excludes_zero
    below = paired_difference([0, 0, 0], [2, 3, 4])
    assert below.high == pytest.approx(-3 + T_975_2 / math.sqrt(3), abs=1e-5) and below.excludes_zero


def test_paired_difference_with_one_or_no_pair_has_no_interval():
    one = paired_difference([5.0], [3.0])
    assert one.n == 1 and one.mean == 2.0 and math.isnan(one.low) and not one.excludes_zero
    assert paired_difference([], []).n == 0


def test_pairs_are_matched_by_seed_not_by_position():
    a = pd.DataFrame({"seed": [2, 0, 1], "value": [13.0, 11.0, 12.0]})
    b = pd.DataFrame({"seed": [1, 0, 3], "value": [10.0, 10.0, 99.0]})  # seed 2 has no partner, seed 3 neither
    d = paired_by_seed(a, b)
    assert d.n == 2 and d.mean == pytest.approx(1.5)  # seed 0: 11 - 10, seed 1: 12 - 10


# A 4 x 3 example (4 losses, 3 columns; higher is better). By hand:
#   col1: A .90 B .80 C .70 D .60 -> ranks A 1, B 2, C 3, D 4
#   col2: A .85 B .86 C .60 D .50 -> ranks B 1, A 2, C 3, D 4
#   col3: A .70 B .60 C .80 D .50 -> ranks C 1, A 2, B 3, D 4
#   rank sums T: A 5, B 6, C 7, D 12; mean ranks 5/3, 2, 7/3, 4
#   Friedman: 12 / (N k (k + 1)) sum T^2 - 3 N (k + 1) = 12 / 60 * 254 - 45 = 5.8, 3 df (no ties)
#   p = P(chi2_3 > 5.8) = erfc(sqrt(5.8 / 2)) + sqrt(2 * 5.8 / pi) exp(-5.8 / 2)  (the df = 3 closed form)
#   Nemenyi: q_0.05(k = 4) = 2.569 (Demšar, Table 5a); CD = 2.569 sqrt(4 * 5 / (6 * 3)) = 2.708
EXAMPLE = pd.DataFrame({"col1": [0.90, 0.80, 0.70, 0.60], "col2": [0.85, 0.86, 0.60, 0.50],
                        "col3": [0.70, 0.60, 0.80, 0.50]}, index=["A", "B", "C", "D"])


def test_rank_summary_of_the_hand_example():
    s = rank_summary(EXAMPLE, higher_is_better=True)
    assert s.mean_ranks.to_dict() == pytest.approx({"A": 5 / 3, "B": 2.0, "C": 7 / 3, "D": 4.0})
    assert (s.k, s.n) == (4, 3)
    assert s.statistic == pytest.approx(5.8)
    p = math.erfc(math.sqrt(2.9)) + math.sqrt(2 * 5.8 / math.pi) * math.exp(-2.9)
    assert s.pvalue == pytest.approx(p, rel=1e-9)
    assert s.cd == pytest.approx(2.569 * math.sqrt(20 / 18), rel=2e-4)
    # A 1.67, B 2, C 2.33 lie within 2.708 of each other, and of D (4) only B and C do (4 - 5/3 = 2.33 < CD too)
    assert s.cliques() == [["A", "B", "C", "D"]]


def test_lower_is_better_reverses_the_ranks_and_ties_share_the_average():
    ranks = rank_matrix(EXAMPLE, higher_is_better=False)
    assert ranks["col1"].tolist() == [4.0, 3.0, 2.0, 1.0]
    tied = pd.DataFrame({"c": [0.9, 0.9, 0.7, 0.9]}, index=list("ABCD"))
    assert rank_matrix(tied)["c"].tolist() == [2.0, 2.0, 4.0, 2.0]  # ranks 1, 2, 3 shared: (1 + 2 + 3) / 3


def test_friedman_with_ties_in_a_column_is_tie_corrected():
    # col1: A = B > C -> ranks 1.5, 1.5, 3; col2: A > B > C -> 1, 2, 3 (k = 3, N = 2)
    # rank sums 2.5, 3.5, 6: 12 / (N k (k + 1)) * (6.25 + 12.25 + 36) - 3 N (k + 1) = 27.25 - 24 = 3.25
    # one tie of t = 2: correction 1 - (8 - 2) / (N k (k^2 - 1)) = 1 - 6 / 48 = 0.875 -> 3.25 / 0.875
    tied = pd.DataFrame({"col1": [0.9, 0.9, 0.8], "col2": [0.9, 0.8, 0.7]}, index=list("ABC"))
    s = rank_summary(tied)
    assert s.mean_ranks.to_dict() == pytest.approx({"A": 1.25, "B": 1.75, "C": 3.0})
    assert s.statistic == pytest.approx(3.25 / 0.875)


def test_a_column_without_every_loss_is_left_out_of_the_ranks():
    partial = EXAMPLE.assign(col4=[0.5, np.nan, 0.4, 0.3])
    s = rank_summary(partial)
    assert s.n == 3 and s.dropped == ["col4"] and s.statistic == pytest.approx(5.8)


def test_nemenyi_q_matches_demsars_table():
    # Demšar 2006, Table 5(a), alpha = 0.05, two-tailed Nemenyi
    table = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
    for k, q in table.items():
        assert nemenyi_q(k) == pytest.approx(q, abs=1.5e-3), k
    assert critical_difference(6, 3) == pytest.approx(2.850 * math.sqrt(6 * 7 / 18), rel=2e-4)


def test_clear_separation_gives_two_groups():
    # 3 losses, 10 columns, always ranked A 1, B 2, C 3: CD = 2.343 sqrt(12 / 60) = 1.048;
    # A-B and B-C differ by 1 < CD (one group each), A-C by 2 > CD
    matrix = pd.DataFrame([[0.9] * 10, [0.8] * 10, [0.7] * 10], index=["A", "B", "C"])
    s = rank_summary(matrix)
    assert s.cd == pytest.approx(2.343 * math.sqrt(0.2), rel=3e-4)  # the table has 3 decimals
    assert s.cliques() == [["A", "B"], ["B", "C"]]
    assert s.statistic == pytest.approx(20.0)  # 12 / (10 * 3 * 4) * (100 + 400 + 900) - 3 * 10 * 4 = 140 - 120


# ---------------------------------------------------------------------------------------------
# The trainer's summaries selected on the test set


def epochs_of(test_accs, val_accs=None):
    val_accs = val_accs or [math.nan] * len(test_accs)
    return [{"epoch": i + 1, "test_acc": t, "val_acc": v} for i, (t, v) in enumerate(zip(test_accs, val_accs))]


def test_best_test_epoch_and_last10_by_hand():
    from drainage_bench.trainer.loop import summarize

    nan = math.nan
    # 12 epochs, evaluated every 3rd: epochs 3, 6, 9, 12 with 0.5, 0.8, 0.7, 0.6
    s = summarize(epochs_of([nan, nan, 0.5, nan, nan, 0.8, nan, nan, 0.7, nan, nan, 0.6]))
    assert (s["best_test_acc"], s["best_test_epoch"]) == (0.8, 6)
    # the last 10 epochs are 3..12; evaluated among them: 3, 6, 9, 12 -> (0.5 + 0.8 + 0.7 + 0.6) / 4 = 0.65
    assert s["last10_test_acc"] == pytest.approx(0.65)
    # 13 epochs: the last 10 are 4..13; evaluated: 6, 9, 12 and 13 (0.9) -> (0.8 + 0.7 + 0.6 + 0.9) / 4 = 0.75
    s = summarize(epochs_of([nan, nan, 0.5, nan, nan, 0.8, nan, nan, 0.7, nan, nan, 0.6, 0.9]))
    assert (s["best_test_acc"], s["best_test_epoch"]) == (0.9, 13) and s["last10_test_acc"] == pytest.approx(0.75)
    # a tie goes to the first epoch of the best value; the test-selected value is not the val-selected one
    s = summarize(epochs_of([0.6, 0.9, 0.9, 0.7], val_accs=[0.5, 0.6, 0.7, 0.8]))
    assert s["best_test_epoch"] == 2 and s["test_acc_at_best_val"] == 0.7 and s["last10_test_acc"] == pytest.approx(0.775)
    # no test evaluation (the Optuna search): NaN and epoch -1
    s = summarize(epochs_of([nan, nan]))
    assert math.isnan(s["best_test_acc"]) and s["best_test_epoch"] == -1 and math.isnan(s["last10_test_acc"])


def test_the_test_selected_metric_says_so():
    metric = get_metric("best_test_acc")
    assert "selected on the test set" in metric.title and "test set" in metric.note
    assert get_metric("last10_test_acc").column == "last10_test_acc"


# ---------------------------------------------------------------------------------------------
# Properties, against scipy's own paired test and the textbook Friedman formula

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from scipy import stats as scipy_stats  # noqa: E402

values = st.floats(min_value=0, max_value=1, allow_nan=False, allow_subnormal=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(values, values), min_size=2, max_size=8))
def test_the_interval_is_scipys_paired_t_interval(pairs):
    a, b = map(np.array, zip(*pairs))
    d = paired_difference(a, b)
    if np.std(a - b) < 1e-9:  # no spread: scipy's interval is undefined (0 / 0)
        return
    test = scipy_stats.ttest_rel(a, b)
    low, high = test.confidence_interval(0.95)
    assert d.low == pytest.approx(low, abs=1e-9) and d.high == pytest.approx(high, abs=1e-9)
    if abs(test.pvalue - 0.05) > 1e-6:  # excluding 0 from the 95% interval is p < 0.05
        assert d.excludes_zero == (test.pvalue < 0.05)


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 6), st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_friedman_matches_the_rank_sum_formula_without_ties(k, n, seed):
    matrix = pd.DataFrame(np.random.default_rng(seed).permuted(np.tile(np.arange(k, dtype=float), (n, 1)), axis=1).T)
    s = rank_summary(matrix)  # column j holds a permutation of 0..k-1: no ties
    sums = rank_matrix(matrix).sum(axis=1)
    assert s.statistic == pytest.approx(12 / (n * k * (k + 1)) * float((sums ** 2).sum()) - 3 * n * (k + 1))
    assert s.mean_ranks.mean() == pytest.approx((k + 1) / 2)  # ranks 1..k in every column


def test_means_equal_up_to_float_rounding_share_their_rank():
    # mean(.90, .92, .94) is 0.9199999999999999 in floats: it ties 0.92 (rank 1.5 each of the best two)
    matrix = pd.DataFrame({"a": [np.mean([0.90, 0.92, 0.94]), 0.92, 0.5], "b": [0.92, 0.92, 0.5]},
                          index=["CE", "GCE", "MAE"])
    assert matrix.loc["CE", "a"] != 0.92
    assert rank_summary(matrix).mean_ranks.to_dict() == {"CE": 1.5, "GCE": 1.5, "MAE": 3.0}

"""NLL and ECE against hand-worked values."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drainage_bench.metrics import calibration as cal


def test_nll_is_the_mean_negative_log_probability_of_the_true_class() -> None:
    # p(y) = 0.5, 0.25, 1: NLL = (log 2 + log 4 + 0) / 3 = log(8) / 3
    assert cal.nll(np.log([0.5, 0.25, 1.0])) == pytest.approx(math.log(8) / 3)


def test_ece_by_hand() -> None:
    # 15 bins of width 1/15 = 0.0667. Confidences 0.95, 0.95 (bin 15), 0.55 and 0.58 (bin 9:
    # (0.533, 0.6]), 0.10 (bin 2: (0.0667, 0.133]).
    conf = np.array([0.95, 0.95, 0.55, 0.58, 0.10])
    correct = np.array([1, 0, 1, 1, 0])
    # bin 15: acc 0.5, conf 0.95 -> 2/5 * 0.45 = 0.18
    # bin 9: acc 1, conf 0.565 -> 2/5 * 0.435 = 0.174
    # bin 2: acc 0, conf 0.10 -> 1/5 * 0.10 = 0.02
    assert cal.ece(conf, correct) == pytest.approx(0.18 + 0.174 + 0.02)


def test_ece_bins_are_closed_on_the_right() -> None:
    # 4 bins (edges exact in binary): 0.25 is in the first bin (0, 0.25] with 0.1:
    # acc 1/2, conf 0.175 -> |0.5 - 0.175| = 0.325; in separate bins it would be (0.75 + 0.1) / 2
    conf = np.array([0.25, 0.1])
    correct = np.array([1, 0])
    assert cal.ece(conf, correct, bins=4) == pytest.approx(0.325)
    # 0.25 + 1e-9 is in the second bin
    assert cal.ece(np.array([0.25 + 1e-9, 0.1]), correct, bins=4) == pytest.approx((0.75 + 0.1) / 2)


def test_ece_15_bins_put_one_in_the_last_bin_and_an_edge_k_over_15_in_bin_k() -> None:
    # bins ((b-1)/15, b/15]: 1.0 and 14.5/15 share bin 15; 7/15 (an edge) shares bin 7 with 6.5/15
    conf = np.array([1.0, 14.5 / 15, 7 / 15, 6.5 / 15])
    correct = np.array([0, 1, 1, 0])
    # bin 15: acc 1/2, conf (1 + 14.5/15)/2 = 29.5/30; bin 7: acc 1/2, conf 13.5/30; each 2/4 of the samples
    hand = 0.5 * abs(0.5 - 29.5 / 30) + 0.5 * abs(0.5 - 13.5 / 30)
    assert cal.ece(conf, correct) == pytest.approx(hand, rel=1e-12)
    # the two alone: one bin, |B|/N = 1
    assert cal.ece(conf[:2], correct[:2]) == pytest.approx(abs(0.5 - 29.5 / 30), rel=1e-12)
    # every edge k/15 falls in bin k, with (k - 1/2)/15 from the middle of that bin: one bin (the edge
    # is the double nearest k/15, an ulp above it for k = 3, 6, 7, 12, 13, 14; (k/15) * 15 rounds to k)
    for k in range(1, 16):
        pair = np.array([k / 15, (k - 0.5) / 15])
        assert cal.ece(pair, np.array([1, 0])) == pytest.approx(abs(0.5 - (k - 0.25) / 15), rel=1e-12), k


def test_perfectly_calibrated_bins_give_zero() -> None:
    # 10 samples at confidence 0.8, 8 of them right
    assert cal.ece(np.full(10, 0.8), np.array([1] * 8 + [0] * 2)) == pytest.approx(0.0)


def test_from_log_probs_matches_the_formulas() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6]])
    labels = np.array([0, 0, 2])
    out = cal.from_log_probs(np.log(p), labels)
    assert out["acc"] == pytest.approx(2 / 3)
    assert out["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.6)) / 3)
    # bins: 0.7 -> (0.667, 0.733] right; 0.6 -> (0.533, 0.6] wrong (sample 2) and right (sample 3)
    assert out["ece"] == pytest.approx((0.3 + abs(0.5 - 0.6) * 2) / 3)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=60))
def test_ece_is_between_zero_and_one_and_at_most_the_mean_gap(samples) -> None:
    conf = np.array([c for c, _ in samples])
    correct = np.array([k for _, k in samples], dtype=float)
    value = cal.ece(conf, correct)
    # the triangle inequality: binning can only merge gaps
    assert 0.0 <= value <= np.abs(correct - conf).mean() + 1e-12

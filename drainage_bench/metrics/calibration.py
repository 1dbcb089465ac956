"""Calibration metrics on numpy arrays (no torch): negative log-likelihood and expected calibration error.

Both take per-sample arrays, so the trainer reduces its logits on the device to three numbers per
test image (the log-probability of the true class, the top-label confidence, whether the top
label is right) and the same formulas serve any caller. For drainage models the trainer computes
these on the *closed* softmax over the C classes (the drainage column left out and the C class
probabilities renormalised), so the numbers compare with the baselines' C-way softmax.
"""
from __future__ import annotations

import numpy as np

ECE_BINS = 15


def nll(log_p_true: np.ndarray) -> float:
    """Negative log-likelihood: NLL = -(1/N) sum_i log p(y_i | x_i).

    ``log_p_true[i]`` is the model's log-probability of sample i's true label (natural log).
    """
    log_p_true = np.asarray(log_p_true, dtype=np.float64)
    return float(-log_p_true.mean()) if log_p_true.size else float("nan")


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error, L1, equal-width bins of the top-label confidence.

        ECE = sum_b (|B_b| / N) * | acc(B_b) - conf(B_b) |

    with B_b the samples whose confidence max_k p_k lies in ((b-1)/M, b/M] (b = 1..M, M = 15;
    a confidence of exactly 0 goes to the first bin), acc the share of them whose top label is
    right and conf their mean confidence. Guo, Pleiss, Sun, Weinberger, "On calibration of
    modern neural networks", ICML 2017 (Eq. 3, M = 15 bins as in their experiments).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    n = confidence.size
    if n == 0:
        return float("nan")
    # bin b holds (b/M, (b+1)/M]: ceil(conf * M) - 1, clipped into 0..M-1
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    gap = np.bincount(index, weights=correct - confidence, minlength=bins)
    # |sum(correct - conf)| / N per bin = (|B|/N) |acc - conf|
    return float(np.abs(gap[count > 0]).sum() / n)


def from_log_probs(log_p: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``{"acc", "nll", "ece"}`` from log-probabilities (N, C) over the classes and labels (N,)."""
    log_p = np.asarray(log_p, dtype=np.float64)
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    top = log_p.argmax(1)
    correct = top == labels
    return {"acc": float(correct.mean()), "nll": nll(log_p[rows, labels]),
            "ece": ece(np.exp(log_p[rows, top]), correct)}

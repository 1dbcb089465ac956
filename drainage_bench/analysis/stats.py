"""Statistics for paper tables: paired differences between losses, mean ranks, the Friedman test
and the Nemenyi critical difference (Demšar 2006). scipy + pandas only, no torch.

Paired difference (`paired_difference`). Two losses trained with the same seed see the same
noisy labels, the same initialisation and the same data order, so their results pair up: with
d_i = a_i - b_i over the n seeds both have,

    mean  d = (1/n) sum d_i,      sd s = sqrt( sum (d_i - d)^2 / (n - 1) )
    95% CI  d ± t_{0.975, n-1} s / sqrt(n)        (the paired t interval; no interval for n < 2)

Ranks across a table (`rank_summary`; Demšar, "Statistical Comparisons of Classifiers over
Multiple Data Sets", JMLR 7, 2006). The table's columns are the blocks (N of them), the losses
the treatments (k). Within each column the losses are ranked, 1 the best (direction from the
metric), ties sharing the average of the ranks they span; R_j is loss j's mean rank.

    Friedman  chi2_F = 12 N / (k (k + 1)) [ sum_j R_j^2 - k (k + 1)^2 / 4 ]   (k - 1 degrees of freedom)
              divided by the tie correction 1 - sum(t^3 - t) / (N k (k^2 - 1)) over the groups
              of t tied values within a column: what is reported is the tie-corrected statistic
              of scipy.stats.friedmanchisquare (Demšar's formula when no column has ties)
    Nemenyi   CD = q_alpha sqrt( k (k + 1) / (6 N) ),  q_alpha = q_{1-alpha}(k, inf) / sqrt(2)
              (q: the studentized range; k = 6, alpha = 0.05: 2.850 as in Demšar's Table 5)

Two losses whose mean ranks differ by less than CD are not significantly different.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
ALPHA = 0.05


@dataclass(frozen=True)
class PairedDifference:
    """Mean difference a - b over n pairs with its paired-t confidence interval (NaN for n < 2)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def paired_difference(a, b, confidence: float = CONFIDENCE) -> PairedDifference:
    """The paired t interval of mean(a - b); `a` and `b` are aligned (same seeds, same order)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = int(d.size)
    if n == 0:
        return PairedDifference(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(1, mean, math.nan, math.nan, math.nan)
    sd = float(d.std(ddof=1))
    from scipy import stats  # imported in the functions: 0.4 s that a plain `table` does not need

    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return PairedDifference(n, mean, sd, mean - half, mean + half)


def paired_by_seed(values: pd.DataFrame, reference: pd.DataFrame, confidence: float = CONFIDENCE) -> PairedDifference:
    """`values` and `reference` are (seed, value) frames of one column: pair them by seed."""
    joined = values.merge(reference, on="seed", suffixes=("", "_ref")).dropna(subset=["value", "value_ref"])
    joined = joined.sort_values("seed")
    return paired_difference(joined["value"], joined["value_ref"], confidence)


def rank_matrix(matrix: pd.DataFrame, higher_is_better: bool = True) -> pd.DataFrame:
    """Ranks of the rows (losses) within each column (block): 1 the best, ties averaged."""
    sign = -1.0 if higher_is_better else 1.0
    from scipy import stats

    return matrix.apply(lambda col: pd.Series(stats.rankdata(sign * col.to_numpy(float)), index=col.index))


def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """q_alpha of the Nemenyi test: the studentized range quantile (k groups, infinite df) / sqrt(2)."""
    from scipy import stats

    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi CD = q_alpha sqrt(k (k + 1) / (6 N)) for k treatments over N blocks."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))


@dataclass
class RankSummary:
    """Mean ranks over the complete columns of a table, the Friedman test and the Nemenyi CD."""

    mean_ranks: pd.Series        # loss -> mean rank (1 best), in table row order
    k: int                       # losses
    n: int                       # columns used (blocks with a value for every loss)
    statistic: float             # Friedman chi-square (NaN when k < 3 or n < 2)
    pvalue: float
    cd: float                    # Nemenyi critical difference at ALPHA (NaN when k < 2 or n < 1)
    alpha: float = ALPHA
    blocks: list[str] = field(default_factory=list)   # the columns used
    dropped: list[str] = field(default_factory=list)  # columns left out (a loss without a value)

    def cliques(self) -> list[list[str]]:
        """Maximal groups of losses (sorted by mean rank) whose ranks lie within CD of each other:
        the bars of the critical-difference figure."""
        order = self.mean_ranks.sort_values()
        names, ranks = list(order.index), order.to_numpy()
        groups: list[list[str]] = []
        for i in range(len(names)):
            j = i
            while j + 1 < len(names) and ranks[j + 1] - ranks[i] < self.cd:
                j += 1
            if j > i and not any(set(names[i:j + 1]) <= set(g) for g in groups):
                groups.append(names[i:j + 1])
        return groups


def rank_summary(matrix: pd.DataFrame, higher_is_better: bool = True, alpha: float = ALPHA) -> RankSummary:
    """`matrix`: losses x columns of cell means. Columns missing a loss's value are dropped
    (the Friedman test needs complete blocks). Means equal up to float rounding tie: they are
    compared to 12 decimals (mean(.90, .92, .94) is 0.9199999999999999, not 0.92)."""
    matrix = matrix.round(12)
    complete = matrix.loc[:, matrix.notna().all(axis=0)]
    dropped = [c for c in matrix.columns if c not in complete.columns]
    k, n = complete.shape
    ranks = rank_matrix(complete, higher_is_better).mean(axis=1) if n else pd.Series(math.nan, index=matrix.index)
    statistic = pvalue = math.nan
    if k >= 3 and n >= 2:
        from scipy import stats

        result = stats.friedmanchisquare(*complete.to_numpy(float))
        statistic, pvalue = float(result.statistic), float(result.pvalue)
    cd = critical_difference(k, n, alpha) if k >= 2 and n >= 1 else math.nan
    return RankSummary(mean_ranks=ranks, k=k, n=n, statistic=statistic, pvalue=pvalue, cd=cd, alpha=alpha,
                       blocks=list(complete.columns), dropped=dropped)

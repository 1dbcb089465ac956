"""NLL / ECE / corruption metrics in tables (direction, not in percent) and the severity figure's
numbers, against hand-made records."""
from __future__ import annotations

import io
import math

import pandas as pd
import pytest

from drainage_bench.analysis import plots as P
from drainage_bench.analysis import tables as T
from drainage_bench.analysis.store import ResultsStore
from results_helpers import record

SWEEP = "moll"


def corruption_rows(base_error: float) -> list[dict]:
    """Two corruptions x 5 severities: error = base + 0.1 s (gaussian_noise), base + 0.2 s (contrast)."""
    rows = []
    for name, group, step in (("gaussian_noise", "noise", 0.1), ("contrast", "digital", 0.2)):
        for s in range(1, 6):
            rows.append(dict(corruption=name, group=group, severity=s, error=base_error + step * s / 10,
                             nll=1.0 + s, ece=0.01 * s))
    return rows


@pytest.fixture
def store(tmp_path):
    # By hand: CE NLL 0.30, 0.40 -> 0.35 ± 0.0707; LS NLL 0.20, 0.22 -> 0.21 ± 0.0141 (best, lower).
    # ECE: CE 0.05, 0.07 -> 6.00 ± 1.41 %; LS 0.02, 0.02 -> 2.00 %.
    rows = [record("ce", "CE", "none", 0.0, 0, 0.90, final_test_nll=0.30, final_test_ece=0.05),
            record("ce", "CE", "none", 0.0, 1, 0.92, final_test_nll=0.40, final_test_ece=0.07),
            record("ls", "LS", "none", 0.0, 0, 0.91, final_test_nll=0.20, final_test_ece=0.02),
            record("ls", "LS", "none", 0.0, 1, 0.93, final_test_nll=0.22, final_test_ece=0.02)]
    s = ResultsStore(tmp_path, SWEEP)
    for i, row in enumerate(rows):
        s.write_trial({**row, "sweep": SWEEP}, [], corruptions=corruption_rows(0.1 * (i % 2)))
    return tmp_path


def test_nll_is_ranked_lower_is_better_and_not_shown_in_percent(store) -> None:
    data = T.aggregate(T.load_selection(store, [SWEEP]), "final_test_nll")
    ce, ls = data.cell("CE", "digits:clean"), data.cell("LS", "digits:clean")
    assert (ce["rank"], ls["rank"]) == (2, 1)
    assert T.cell_text(ls, T.scale(data.metric)) == "0.21 ± 0.01"
    assert T.cell_text(ce, T.scale(data.metric)) == "0.35 ± 0.07"
    text = T.format_table(data, "markdown")
    assert "**0.21 ± 0.01**" in text and "(%)" not in text.splitlines()[0] and "not percent" in text


def test_ece_is_in_percent_and_lower_is_better(store) -> None:
    data = T.aggregate(T.load_selection(store, [SWEEP]), "final_test_ece")
    assert data.cell("LS", "digits:clean")["rank"] == 1
    assert T.cell_text(data.cell("CE", "digits:clean")) == "6.00 ± 1.41"


def test_severity_curves_by_hand(store) -> None:
    curves = P.severity_curves(T.load_selection(store, [SWEEP])).set_index(["row", "metric", "severity"])
    # severity 0: the clean test error, CE 1 - 0.90, 1 - 0.92 -> 0.09
    assert curves.loc[("CE", "error", 0), "mean"] == pytest.approx(0.09)
    # severity 3, seed 0 (base 0): mean of 0.03 and 0.06 = 0.045; seed 1 (base 0.1): 0.145 -> 0.095
    assert curves.loc[("CE", "error", 3), "mean"] == pytest.approx(0.095)
    assert curves.loc[("CE", "error", 3), "std"] == pytest.approx(math.sqrt(2) * 0.05)
    assert curves.loc[("LS", "ece", 5), "mean"] == pytest.approx(0.05)
    fig = P.corruption_severity(T.load_selection(store, [SWEEP]))
    error_axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_ylabel() == "error (%)"]
    ce = next(line for line in error_axes[0].get_lines() if line.get_label() == "CE")
    assert dict(zip(ce.get_xdata(), ce.get_ydata()))[3] == pytest.approx(9.5)  # the 0.095 above, in percent


def test_nll_differences_are_in_units_of_the_metric(store) -> None:
    selection = T.load_selection(store, [SWEEP])
    data = T.add_comparison(T.aggregate(selection, "final_test_nll"), selection, "CE")
    # LS - CE by seed: 0.20 - 0.30 = -0.10, 0.22 - 0.40 = -0.18 -> mean -0.14 (not -14.00)
    text = T.comparison_text(data, "LS", data.cell("LS", "digits:clean"))
    assert text.startswith(" Δ -0.14 [")
    csv = pd.read_csv(io.StringIO(T.format_table(data, "csv")))
    assert csv.loc[(csv["loss"] == "LS") & (csv["column"] == "digits:clean"), "diff_pct"].item() == pytest.approx(-0.14)

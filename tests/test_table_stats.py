"""`table --compare-to ROW` (paired differences by seed) and `table --ranks` (mean ranks, Friedman,
Nemenyi) on a hand-made store, in every format; the test-selected metric is labelled as such."""
from __future__ import annotations

import io
import json
import shutil
import subprocess

import pandas as pd
import pytest
from typer.testing import CliRunner

from drainage_bench.analysis import tables as T
from drainage_bench.cli import app
from results_helpers import record, write_rows

SWEEP = "paired"
# By hand (percent):
#   clean:   CE 90, 92, 94 (seeds 0, 1, 2); GCE 91, 94, 97; Drainage 92, 95, 98
#            GCE - CE = [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.302653 -> 2 ± 2.484 = [-0.48, +4.48], no mark
#            Drainage - CE = [2, 3, 4]: mean 3 -> [+0.52, +5.48], excludes 0: marked
#   asym0.4: CE 50, 60 (seeds 0, 1); GCE 70, 80 (seeds 1, 2); Drainage 55, 66, 90 (seeds 0, 1, 2)
#            GCE - CE: only seed 1 is shared: +10 (1 pair), no interval (by position it would be +20, +20)
#            Drainage - CE: seeds 0, 1: [5, 6]: mean 5.5, sd 0.7071, t(0.975, 1) = 12.7062
#            -> 5.5 ± 12.7062 * 0.7071 / sqrt(2) = 5.5 ± 6.353 = [-0.85, +11.85], no mark
#   ranks (means: clean CE 92, GCE 94, Drainage 95; asym CE 55, GCE 75, Drainage 70.33):
#            clean: Drainage 1, GCE 2, CE 3; asym: GCE 1, Drainage 2, CE 3
#            mean ranks CE 3, GCE 1.5, Drainage 1.5; rank sums 6, 3, 3
#            Friedman: 12 / (N k (k + 1)) sum T^2 - 3 N (k + 1) = 12 / 24 * 54 - 24 = 3.00 (k = 3, N = 2)
#            Nemenyi CD = 2.343 sqrt(3 * 4 / (6 * 2)) = 2.34
VALUES = {("ce", "CE"): {("none", 0.0): [0.90, 0.92, 0.94], ("asym", 0.4): [0.50, 0.60, None]},
          ("gce", "GCE"): {("none", 0.0): [0.91, 0.94, 0.97], ("asym", 0.4): [None, 0.70, 0.80]},
          ("drainage", "Drainage"): {("none", 0.0): [0.92, 0.95, 0.98], ("asym", 0.4): [0.55, 0.66, 0.90]}}


@pytest.fixture
def paired(tmp_path):
    rows = []
    for (loss, display), settings in VALUES.items():
        for (noise, rate), accs in settings.items():
            rows += [record(loss, display, noise, rate, seed, acc, sweep=SWEEP, best_test_acc=acc + 0.01)
                     for seed, acc in enumerate(accs) if acc is not None]
    return write_rows(tmp_path, rows, sweep=SWEEP)


def table(root, *args) -> str:
    result = CliRunner().invoke(app, ["table", SWEEP, "--results", str(root), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_compare_to_in_markdown_and_terminal(paired):
    for fmt in ("markdown", "terminal"):
        out = table(paired, "--compare-to", "CE", "--format", fmt)
        assert "Δ +2.00 [-0.48, +4.48]" in out and "Δ +2.00 [-0.48, +4.48]‡" not in out
        assert "Δ +3.00 [+0.52, +5.48]‡" in out
        assert "Δ +10.00 (1 pair)" in out
        assert "Δ +5.50 [-0.85, +11.85]" in out and "[-0.85, +11.85]‡" not in out
        assert "(reference)" in out and "1 to 3 pairs per cell" in out.replace("\n", " ")
        assert "paired t test" in out.replace("\n", " ")


def test_compare_to_in_csv_json_and_latex(paired):
    frame = pd.read_csv(io.StringIO(table(paired, "--compare-to", "ce", "--format", "csv")))  # by loss name too
    drainage = frame[(frame["loss"] == "Drainage") & (frame["column"] == "digits:clean")].iloc[0]
    assert drainage["diff_pct"] == pytest.approx(3.0)
    assert drainage["diff_low_pct"] == pytest.approx(3 - 4.302653 / 3 ** 0.5, abs=1e-5)
    assert (drainage["n_pairs"], bool(drainage["diff_excludes_zero"]), drainage["compare_to"]) == (3, True, "CE")
    gce_noisy = frame[(frame["loss"] == "GCE") & (frame["column"] == "digits:asym0.4")].iloc[0]
    assert gce_noisy["n_pairs"] == 1 and gce_noisy["diff_pct"] == pytest.approx(10.0)
    assert pd.isna(gce_noisy["diff_low_pct"])
    doc = json.loads(table(paired, "--compare-to", "CE", "--format", "json"))
    cell = next(c for c in doc["cells"] if c["loss"] == "Drainage" and c["column"] == "digits:asym0.4")
    assert cell["diff_high_pct"] == pytest.approx(5.5 + 12.7062 * 0.5, abs=1e-3)
    latex = table(paired, "--compare-to", "CE", "--format", "latex")
    assert r"$\Delta$ +3.00 [+0.52, +5.48]$^\ddagger$" in latex


def test_compare_to_an_unknown_row_is_refused(paired):
    result = CliRunner().invoke(app, ["table", SWEEP, "--results", str(paired), "--compare-to", "MAE"])
    assert result.exit_code != 0 and "--compare-to 'MAE' is not a row" in str(result.exception)


def test_rank_summary_by_hand(paired):
    doc = json.loads(table(paired, "--ranks", "--format", "json"))["ranks"]
    assert doc["mean_ranks"] == pytest.approx({"CE": 3.0, "GCE": 1.5, "Drainage": 1.5})
    assert doc["friedman_chi2"] == pytest.approx(3.0) and (doc["k"], doc["n"]) == (3, 2)
    assert doc["nemenyi_cd"] == pytest.approx(2.343, abs=1e-3)
    out = table(paired, "--ranks", "--format", "markdown")
    assert "Mean rank (1 = best, ties share their average rank): GCE 1.50, Drainage 1.50, CE 3.00." in out
    assert "chi-square = 3.00, 2 df" in out and "CD = 2.34" in out
    frame = pd.read_csv(io.StringIO(table(paired, "--ranks", "--format", "csv")))
    assert frame.groupby("loss")["mean_rank"].first().to_dict() == pytest.approx({"CE": 3.0, "GCE": 1.5, "Drainage": 1.5})


def test_the_test_selected_metric_is_labelled_in_every_caption(paired):
    for fmt in ("terminal", "markdown", "latex"):
        out = table(paired, "--metric", "best_test_acc", "--format", fmt).replace("\n", " ")
        assert "(selected on the test set: optimistic)" in out, fmt
        assert "an epoch chosen by looking at the test set" in out, fmt
    latex = table(paired, "--metric", "best_test_acc", "--format", "latex")
    caption = next(line for line in latex.splitlines() if line.startswith(r"\caption"))
    assert "selected on the test set" in caption
    assert json.loads(table(paired, "--metric", "best_test_acc", "--format", "json"))["caption"].count("test set") == 1


def test_plot_draws_the_critical_difference_figure(paired, tmp_path):
    result = CliRunner().invoke(app, ["plot", SWEEP, "--results", str(paired), "--out", str(tmp_path / "fig")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fig" / "critical_difference_final_test_acc.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "fig" / "critical_difference_final_test_acc.pdf").is_file()


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (an optional tool)")
def test_latex_with_comparison_and_ranks_compiles(paired, tmp_path):
    data = T.add_ranks(T.add_comparison(T.aggregate(T.load_selection(paired, [SWEEP])),
                                        T.load_selection(paired, [SWEEP]), "CE"))
    (tmp_path / "t.tex").write_text(T.format_table(data, "latex", standalone=True))
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]


def test_ranks_tie_means_equal_up_to_float_rounding_and_follow_the_metric_direction(tmp_path):
    # clean: CE 0.90, 0.92, 0.94 (mean 0.9199999999999999 in floats) ties GCE 0.92 x 3 -> 1.5 each,
    # Drainage 0.91 -> 3; asym0.4: Drainage 0.8 > GCE 0.7 > CE 0.6 -> 1, 2, 3.
    # Mean ranks: CE (1.5 + 3) / 2 = 2.25, GCE (1.5 + 2) / 2 = 1.75, Drainage (3 + 1) / 2 = 2.
    # NLL (lower is better): CE 0.3, GCE 0.2, Drainage 0.1 in both columns -> ranks 3, 2, 1.
    accs = {("ce", "CE"): ([0.90, 0.92, 0.94], 0.6, 0.3), ("gce", "GCE"): ([0.92] * 3, 0.7, 0.2),
            ("drainage", "Drainage"): ([0.91] * 3, 0.8, 0.1)}
    rows = [record(loss, display, noise, rate, seed, acc, sweep=SWEEP, final_test_nll=nll)
            for (loss, display), (clean, noisy, nll) in accs.items() for seed in range(3)
            for noise, rate, acc in (("none", 0.0, clean[seed]), ("asym", 0.4, noisy))]
    root = write_rows(tmp_path, rows, sweep=SWEEP)
    ranks = json.loads(table(root, "--ranks", "--format", "json"))["ranks"]["mean_ranks"]
    assert ranks == pytest.approx({"CE": 2.25, "GCE": 1.75, "Drainage": 2.0})
    nll = json.loads(table(root, "--ranks", "--format", "json", "--metric", "final_test_nll"))["ranks"]["mean_ranks"]
    assert nll == pytest.approx({"CE": 3.0, "GCE": 2.0, "Drainage": 1.0})

"""Paper tables: aggregate numbers against values worked out by hand (see results_helpers) and
against numpy on real trainer records; bold / second-best cells; missing and failed trials;
every output format, and the LaTeX through pdflatex when it is installed."""
from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from drainage_bench.analysis import tables as T
from drainage_bench.analysis.store import ResultsStore
from drainage_bench.cli import app
from drainage_bench.errors import UserError
from drainage_bench.sweeps.expected import record_expected
from drainage_bench.sweeps.spec import load_spec
from results_helpers import HAND_ROWS, HAND_SWEEP, REAL_SWEEP, record, real_store, write_rows


@pytest.fixture
def hand(tmp_path):
    return write_rows(tmp_path, HAND_ROWS)


@pytest.fixture
def hand_data(hand):
    return T.aggregate(T.load_selection(hand, [HAND_SWEEP]))


def cell(data, row, column):
    return data.cell(row, f"digits:{column}")


# ---------------------------------------------------------------------------------------------
# The aggregate


def test_means_std_and_counts_match_the_hand_computed_values(hand_data):
    ce_clean = cell(hand_data, "CE", "clean")
    assert ce_clean["mean"] == pytest.approx(0.92) and ce_clean["std"] == pytest.approx(0.02)
    assert ce_clean["n"] == 3 and ce_clean["n_failed"] == 0
    ce_noisy = cell(hand_data, "CE", "asym0.4")
    assert ce_noisy["mean"] == pytest.approx(0.62)
    assert ce_noisy["std"] == pytest.approx(math.sqrt(0.0008))  # sample std (ddof=1) of 0.60, 0.64
    assert (ce_noisy["n"], ce_noisy["n_failed"]) == (2, 1)
    gce = cell(hand_data, "GCE", "clean")
    assert gce["std"] == pytest.approx(math.sqrt(2) / 100)
    assert cell(hand_data, "GCE", "asym0.4")["n"] == 0
    assert hand_data.realized["digits:asym0.4"] == pytest.approx(0.405)  # failed trials' noise counts too
    assert hand_data.n_ref == 3 and hand_data.failed_total == 1


def test_rows_columns_and_ranks(hand_data):
    assert hand_data.rows == ["CE", "GCE", "Drainage"]  # without a spec: the loss registry's order
    assert [c.tag for c in hand_data.columns] == ["clean", "asym0.4"]  # clean first
    ranks = hand_data.cells["rank"].unstack()
    assert ranks.loc["Drainage"].tolist() == [1, 1]
    assert ranks.loc["CE"].tolist() == [2, 2]
    assert ranks.loc["GCE"].tolist() == [0, 0]


def test_cells_that_look_tied_share_the_rank(tmp_path):
    rows = [record("ce", "CE", "none", 0.0, 0, 0.850001), record("gce", "GCE", "none", 0.0, 0, 0.849996),
            record("sce", "SCE", "none", 0.0, 0, 0.80), record("mae", "MAE", "none", 0.0, 0, 0.70)]
    data = T.aggregate(T.load_selection(write_rows(tmp_path, rows)))
    ranks = data.cells["rank"].droplevel("column").to_dict()
    assert ranks == {"CE": 1, "GCE": 1, "SCE": 2, "MAE": 0}  # 85.00 and 85.00 tie; 80.00 is second


def test_lower_is_better_for_the_drainage_share_of_clean_samples(tmp_path):
    rows = [record("drainage", "Drainage a", "none", 0.0, 0, 0.9, final_drainage_share_clean=0.05),
            record("drainage", "Drainage b", "none", 0.0, 0, 0.9, final_drainage_share_clean=0.10, suffix="b"),
            record("ce", "CE", "none", 0.0, 0, 0.9)]
    data = T.aggregate(T.load_selection(write_rows(tmp_path, rows)), "drainage_clean")
    assert data.rows == ["Drainage a", "Drainage b"] and data.dropped_rows == ["CE"]
    assert data.cells["rank"].droplevel("column").to_dict() == {"Drainage a": 1, "Drainage b": 2}


def test_a_metric_that_does_not_apply_reads_na(hand):
    data = T.aggregate(T.load_selection(hand), "drainage_noisy")
    assert data.rows == ["Drainage"]
    assert T.cell_text(cell(data, "Drainage", "clean")) == "n/a"
    noisy = cell(data, "Drainage", "asym0.4")
    assert noisy["mean"] == pytest.approx(0.80) and noisy["std"] == pytest.approx(0.10)


def test_spec_order_and_missing_trials(tmp_path):
    """quickstart expects 6 losses x 3 noise settings x 2 seeds; three records are there."""
    rows = [record("drainage", "Drainage", "asym", 0.2, 0, 0.8, sweep="quickstart"),
            record("ce", "CE", "none", 0.0, 0, 0.9, sweep="quickstart"),
            record("ce", "CE", "none", 0.0, 1, 0.92, sweep="quickstart")]
    root = write_rows(tmp_path, rows, "quickstart")
    spec = load_spec("quickstart")
    record_expected(ResultsStore(root, "quickstart"), spec, spec.expand())  # as `sweep` does
    data = T.aggregate(T.load_selection(root, ["quickstart"]))
    assert data.rows == ["CE", "GCE", "SCE", "NCE+RCE", "ANL-CE", "Drainage"]  # the spec's order
    assert data.missing_total == 36 - 3
    drain = cell(data, "Drainage", "asym0.2")
    assert (drain["n"], drain["n_missing"]) == (1, 1)
    assert T.seed_note(drain, data.n_ref) == "n=1"  # a cell with a seed missing shows n
    assert T.seed_note(cell(data, "CE", "clean"), data.n_ref) == ""
    assert cell(data, "GCE", "asym0.4")["n_missing"] == 2
    assert "Failed trials: 0; trials without a record (running or not started): 33." in T.footnotes(data, "b", "s")[2]


def test_a_metric_older_records_lack_says_so(tmp_path):
    # HAND_ROWS predate the calibration metrics (no final_test_ece column): "exists for every trial only" read as nonsense.
    root = write_rows(tmp_path, HAND_ROWS)
    with pytest.raises(UserError, match=r"metric final_test_ece does not apply to any selected trial: the selected "
                                        r"records predate it \(an older version wrote them\); choose another"):
        T.aggregate(T.load_selection(root, [HAND_SWEEP]), "final_test_ece")


def test_where_and_loss_filters(hand):
    data = T.aggregate(T.load_selection(hand, where=["noise=none", "seed=0,1"], losses=["ce", "Drainage"]))
    assert data.rows == ["CE", "Drainage"] and [c.tag for c in data.columns] == ["clean"]
    assert cell(data, "CE", "clean")["mean"] == pytest.approx(0.91)  # seeds 0 and 1 only
    with pytest.raises(UserError, match="valid: .*noise_rate"):
        T.load_selection(hand, where=["nosie=none"])
    with pytest.raises(UserError, match="not in the selected trials"):
        T.load_selection(hand, losses=["focal"])
    with pytest.raises(UserError, match="no trials match"):
        T.load_selection(hand, where=["dataset=cifar10"])


def test_two_different_trials_with_one_seed_in_a_cell_are_refused(tmp_path):
    rows = [record("ce", "CE", "none", 0.0, 0, 0.9), record("ce", "CE", "none", 0.0, 0, 0.8, suffix="x", lr=0.1)]
    with pytest.raises(UserError, match="differing in lr"):
        T.load_selection(write_rows(tmp_path, rows))


def test_unknown_sweep_and_metric(hand):
    with pytest.raises(UserError, match="valid: hand"):
        T.load_selection(hand, ["hadn"])
    with pytest.raises(UserError, match="unknown metric"):
        T.get_metric("accuracy")


# ---------------------------------------------------------------------------------------------
# The formats


def test_terminal_text(hand_data):
    text = T.format_table(hand_data, "terminal")
    lines = {line.split()[0]: line for line in reversed(text.splitlines()) if line.strip()}
    assert "93.00 ± 2.00*" in lines["Drainage"] and "82.00 ± 2.00*" in lines["Drainage"]
    assert "92.00 ± 2.00†" in lines["CE"] and "62.00 ± 2.83† (n=2)" in lines["CE"]
    assert "90.00 ± 1.41 (n=2)" in lines["GCE"] and lines["GCE"].rstrip().endswith("—")
    assert "40.50" in lines["Realized"]
    assert "sample standard deviation (ddof = 1)" in text and "Failed trials: 1." in text
    assert "Trials not run yet are not counted: no trial list is recorded" in text


def test_without_a_trial_list_the_table_says_unrun_trials_are_not_counted(tmp_path):
    # Every cell full and nothing failed: without expected.parquet a lost seed would look the same.
    rows = [record("ce", "CE", "none", 0.0, s, 0.9) for s in (0, 1)]
    notes = T.footnotes(T.aggregate(T.load_selection(write_rows(tmp_path, rows))), "b", "s")
    assert not any(n.startswith("—:") for n in notes)
    assert "Trials not run yet are not counted: no trial list is recorded for this sweep " \
           "(`drainage-bench status SPEC` records it)." in notes
    # Every trial failed: no cell has a seed count to compare with ("is not 0" read as nonsense).
    failed = [record("ce", "CE", "none", 0.0, s, float("nan"), status="failed") for s in (0, 1)]
    notes = T.footnotes(T.aggregate(T.load_selection(write_rows(tmp_path / "f", failed))), "b", "s")
    assert "n=k marks a cell that has missing/failed seeds." in notes[0] and "is not 0" not in notes[0]


def test_a_single_seed_shows_the_mean_alone(tmp_path):
    rows = [record("ce", "CE", "none", 0.0, 0, 0.875), record("gce", "GCE", "none", 0.0, 0, 0.5)]
    data = T.aggregate(T.load_selection(write_rows(tmp_path, rows)))
    assert T.cell_text(data.cell("CE", "digits:clean")) == "87.50"


def test_markdown(hand_data):
    text = T.format_table(hand_data, "markdown")
    row = next(line for line in text.splitlines() if line.startswith("| Drainage"))
    assert row.split(" | ")[1:3] == ["**93.00 ± 2.00**", "**82.00 ± 2.00** |"]
    ce = next(line for line in text.splitlines() if line.startswith("| CE"))
    assert "*62.00 ± 2.83* <sub>n=2</sub>" in ce


def latex_rows(text: str) -> dict[str, list[str]]:
    rows = [line.removesuffix(r" \\").split(" & ") for line in text.splitlines() if line.endswith(r" \\")]
    return {cells[0]: cells[1:] for cells in rows}


def test_latex_structure_and_marked_cells(hand_data):
    text = T.format_table(hand_data, "latex")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrr}"):
        assert rule in text
    assert text.index(r"\toprule") < text.index(r"\midrule") < text.index(r"\bottomrule")
    rows = latex_rows(text)
    assert rows["Drainage"] == [r"\textbf{93.00 $\pm$ 2.00}", r"\textbf{82.00 $\pm$ 2.00}"]
    assert rows["CE"] == [r"\underline{92.00 $\pm$ 2.00}", r"\underline{62.00 $\pm$ 2.83}\textsuperscript{n=2}"]
    assert rows["GCE"] == [r"90.00 $\pm$ 1.41\textsuperscript{n=2}", "---"]
    assert rows[r"\textit{Realized noise}"] == ["0.00", "40.50"]
    assert rows["Loss"] == ["", r"40\%"]
    assert text.count(r"\textbf{") == 2


def test_latex_escapes_names():
    assert T.latex_escape("CE + L1_x 40% & #") == r"CE + L1\_x 40\% \& \#"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (an optional tool)")
def test_latex_compiles_with_pdflatex(hand_data, tmp_path):
    (tmp_path / "table.tex").write_text(T.format_table(hand_data, "latex", standalone=True))
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "table.pdf").read_bytes().startswith(b"%PDF")


def test_csv_and_json(hand_data):
    frame = pd.read_csv(io.StringIO(T.format_table(hand_data, "csv")))
    ce = frame[(frame["loss"] == "CE") & (frame["column"] == "digits:asym0.4")].iloc[0]
    assert ce["mean_pct"] == pytest.approx(62.0) and ce["std_pct"] == pytest.approx(100 * math.sqrt(0.0008))
    assert (ce["n"], ce["n_failed"], ce["rank"]) == (2, 1, 2)
    doc = json.loads(T.format_table(hand_data, "json"))
    gce = next(c for c in doc["cells"] if c["loss"] == "GCE" and c["column"] == "digits:asym0.4")
    assert gce["mean_pct"] is None and gce["n"] == 0
    assert doc["failed"] == 1 and doc["rows"] == ["CE", "GCE", "Drainage"]


def test_format_from_the_output_suffix():
    assert T.format_for("t.tex", None) == "latex" and T.format_for("t.md", None) == "markdown"
    assert T.format_for(None, None) == "terminal" and T.format_for("t.tex", "csv") == "csv"
    with pytest.raises(UserError, match="valid: csv"):
        T.format_for(None, "html")


# ---------------------------------------------------------------------------------------------
# The command


def test_cli_writes_each_format(hand, tmp_path):
    runner = CliRunner()
    out = tmp_path / "t.tex"
    result = runner.invoke(app, ["table", "--results", str(hand), "--output", str(out), "--standalone"])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith(r"\documentclass{article}")
    result = runner.invoke(app, ["table", HAND_SWEEP, "--results", str(hand), "--format", "csv", "--loss", "gce"])
    assert result.exit_code == 0 and result.output.splitlines()[1].startswith("GCE,digits,none")


def test_cli_bad_input_is_one_line_and_exit_2(hand):
    done = subprocess.run([sys.executable, "-m", "drainage_bench.cli", "table", "--results", str(hand),
                           "--metric", "acc"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: unknown metric 'acc'") and len(done.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Real trainer records


@pytest.mark.slow
def test_table_of_real_records_matches_numpy(tmp_path_factory):
    root = real_store(tmp_path_factory)
    data = T.aggregate(T.load_selection(root, [REAL_SWEEP]))
    records = [pq.read_table(p).to_pylist()[0] for p in sorted((root / REAL_SWEEP / "trials").glob("*.parquet"))]
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    assert data.rows == ["CE", "Drainage"] and [c.id for c in data.columns] == ["digits:asym0.2"]
    for loss, row in (("ce", "CE"), ("drainage", "Drainage")):
        accs = np.array([r["final_test_acc"] for r in records if r["loss"] == loss])
        got = data.cell(row, "digits:asym0.2")
        assert got["mean"] == pytest.approx(accs.mean(), abs=1e-12)
        assert got["std"] == pytest.approx(accs.std(ddof=1), abs=1e-12)
        assert got["n"] == 2
        text = T.cell_text(got)
        assert text == f"{100 * accs.mean():.2f} ± {100 * accs.std(ddof=1):.2f}"
    realized = np.mean([r["realized_noise_rate"] for r in records])
    assert data.realized["digits:asym0.2"] == pytest.approx(realized)
    means = {row: data.cell(row, "digits:asym0.2")["mean"] for row in data.rows}
    best, other = sorted(means, key=means.get, reverse=True)
    rows = latex_rows(T.format_table(data, "latex"))
    assert data.cell(best, "digits:asym0.2")["rank"] == 1 and r"\textbf{" in rows[best][0]
    if round(100 * means[best], 2) == round(100 * means[other], 2):  # tied as shown: both bold
        assert data.cell(other, "digits:asym0.2")["rank"] == 1 and r"\textbf{" in rows[other][0]
    else:  # two rows: the other one is second best, not bold
        assert data.cell(other, "digits:asym0.2")["rank"] == 2 and r"\textbf{" not in rows[other][0]

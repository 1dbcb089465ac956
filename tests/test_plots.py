"""Figures: the lines drawn carry the numbers worked out by hand / with numpy, legends have one
entry per loss (or per curve), and the files written are real PNG and PDF files."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from drainage_bench.analysis import plots as P
from drainage_bench.analysis import tables as T
from drainage_bench.cli import app
from drainage_bench.errors import UserError
from results_helpers import HAND_ROWS, HAND_SWEEP, REAL_SWEEP, real_store, record, write_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def hand(tmp_path):
    return T.load_selection(write_rows(tmp_path / "results", HAND_ROWS), [HAND_SWEEP])


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return T.load_selection(real_store(tmp_path_factory), [REAL_SWEEP])


def legend_texts(fig) -> list[str]:
    assert len(fig.legends) == 1
    return [t.get_text() for t in fig.legends[0].get_texts()]


def test_accuracy_vs_noise_lines_carry_the_hand_computed_means(hand):
    fig = P.accuracy_vs_noise(T.aggregate(hand))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 1 and axes[0].get_title() == "Asymmetric noise"
    lines = {line.get_label(): line for line in axes[0].get_lines()}
    assert sorted(lines) == ["CE", "Drainage", "GCE"] and legend_texts(fig) == ["CE", "GCE", "Drainage"]
    np.testing.assert_allclose(lines["CE"].get_xdata(), [0, 40])
    np.testing.assert_allclose(lines["CE"].get_ydata(), [92, 62])
    np.testing.assert_allclose(lines["GCE"].get_ydata(), [90])  # no GCE trial under noise: one point
    band = axes[0].collections[0].get_paths()[0].vertices[:, 1]  # CE's band: mean ± sample std
    assert band.max() == pytest.approx(92 + 2) and band.min() == pytest.approx(62 - 100 * np.sqrt(0.0008))
    assert "noise rate (%)" == axes[0].get_xlabel() and "(%)" in axes[0].get_ylabel()


def test_a_metric_that_is_not_a_fraction_is_drawn_in_its_own_units(tmp_path):
    # NLL was drawn times 100 under a "(%)" label; by hand: clean 0.30, 0.50 -> 0.40; asym0.4 0.9 -> 0.90
    rows = [record("ce", "CE", "none", 0.0, s, 0.9, final_test_nll=v) for s, v in ((0, 0.3), (1, 0.5))]
    rows.append(record("ce", "CE", "asym", 0.4, 0, 0.6, final_test_nll=0.9))
    fig = P.accuracy_vs_noise(T.aggregate(T.load_selection(write_rows(tmp_path, rows)), "final_test_nll"))
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [0.4, 0.9])
    assert ax.get_ylabel() == "final test NLL"


def test_files_are_png_and_pdf(hand, tmp_path):
    paths = P.write_figure(P.accuracy_vs_noise(T.aggregate(hand)), tmp_path / "figs", "acc")
    assert [p.name for p in paths] == ["acc.png", "acc.pdf"]
    assert paths[0].read_bytes()[:8] == PNG_MAGIC and paths[1].read_bytes()[:5] == b"%PDF-"


def test_without_epochs_or_samples_those_figures_are_left_out(hand, tmp_path):
    paths, notes = P.make_figures(hand, tmp_path)
    assert sorted(p.name for p in paths) == ["final_test_acc_vs_noise.pdf", "final_test_acc_vs_noise.png"]
    # curves, histograms, CD (one column), corruption severity
    assert len(notes) == 4 and all("not drawn" in n for n in notes)
    assert "corruption_severity: not drawn (no trial evaluated corruptions)" in notes


@pytest.mark.slow
def test_figures_drawn_by_two_processes_are_those_drawn_by_one(real, tmp_path):
    one = P.make_figures(real, tmp_path / "one", jobs=1)
    two = P.make_figures(real, tmp_path / "two", jobs=2)
    assert [p.name for p in one[0]] == [p.name for p in two[0]] and len(one[0]) == 6 and one[1] == two[1]
    for a, b in zip(one[0], two[0]):
        if a.suffix == ".png":  # the same pixels (the PDFs carry their creation time)
            assert a.read_bytes() == b.read_bytes()


def test_default_folder():
    assert P.default_out_dir("results", ["a"]).as_posix() == "results/a/figures"
    assert P.default_out_dir("results", ["a", "b"]).as_posix() == "results/figures/a+b"


def test_setting_choice(hand):
    assert P.pick_setting(hand, None).tag == "asym0.4"  # the noisiest
    assert P.pick_setting(hand, "clean").tag == "clean"
    with pytest.raises(UserError, match="valid: asym0.4, clean"):
        P.pick_setting(hand, "sym0.4")


@pytest.mark.slow
def test_learning_curves_are_means_over_seeds(real):
    fig = P.learning_curves(real, "asym0.2")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["CE (2 seeds)", "Drainage (2 seeds)"]
    assert legend_texts(fig) == ["test accuracy", "train accuracy vs clean labels",
                                 "train accuracy vs noisy labels (trained on)",
                                 "mislabeled samples fit to their wrong label"]
    epochs = pq.read_table(real.root / REAL_SWEEP / "epochs").to_pandas()
    ce_ids = real.trials.loc[real.trials["loss"] == "ce", "trial_id"]
    expected = epochs[epochs["trial_id"].isin(ce_ids)].groupby("epoch")["test_acc"].mean() * 100
    ce_lines = {line.get_label(): line for line in axes[0].get_lines()}
    assert len(ce_lines) == 4
    np.testing.assert_allclose(ce_lines["test accuracy"].get_ydata(), expected.to_numpy())
    np.testing.assert_allclose(ce_lines["test accuracy"].get_xdata(), [1, 2])


@pytest.mark.slow
def test_drainage_histograms_split_clean_and_mislabeled(real):
    fig = P.drainage_histograms(real)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 1 and axes[0].get_title().startswith("Drainage, digits")  # CE has no samples
    samples = pq.read_table(real.root / REAL_SWEEP / "samples").to_pandas()
    n_noisy = int(samples["is_noisy"].sum())
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == [f"clean labels (n = {len(samples) - n_noisy})", f"mislabeled (n = {n_noisy})"]
    for patch, noisy in zip(axes[0].patches, (False, True)):  # heights: % of the group per bin
        probs = samples.loc[samples["is_noisy"] == noisy, "drainage_prob"].to_numpy()
        counts, _ = np.histogram(probs, bins=25, range=(0, 1))
        assert patch.get_path().vertices[:, 1].max() == pytest.approx(100 * counts.max() / len(probs))


@pytest.mark.slow
def test_plot_command_writes_all_figures(real, tmp_path):
    result = CliRunner().invoke(app, ["plot", "--results", str(real.root), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{stem}.{ext}" for stem in ("final_test_acc_vs_noise", "learning_curves_asym0.2",
                                                           "drainage_probability") for ext in ("png", "pdf"))
    assert all((tmp_path / n).read_bytes()[:4] in (PNG_MAGIC[:4], b"%PDF") for n in names)

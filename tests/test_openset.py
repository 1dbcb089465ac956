"""Open-set trials: split parsing, the data of a split, the trainer's scores, SVHN, bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drainage_bench.analysis.store import ResultsStore
from drainage_bench.config import build_config
from drainage_bench.errors import UserError
from drainage_bench.sweeps.spec import parse_spec
from drainage_bench.trainer.data import load_dataset
from drainage_bench.trainer.loop import prepare, run_trial
from drainage_bench.trainer.openset import parse_openset
from conftest import assert_user_error

CLI = [sys.executable, "-m", "drainage_bench.cli"]
SIX = "known:0,1,2,3,4,5"


def test_standard_splits_are_the_published_lists() -> None:
    # ARPL split.py / Vaze et al. osr_splits.py, MNIST split 3: [3, 7, 8, 4, 0, 5]
    split = parse_openset("standard:3", "mnist")
    assert split.known == (0, 3, 4, 5, 7, 8) and split.unknown == (1, 2, 6, 9)
    # SVHN split 2: [8, 9, 4, 7, 2, 1]
    assert parse_openset("standard:2", "svhn").unknown == (0, 3, 5, 6)
    # CIFAR-10 splits 0 [0, 6, 4, 9, 1, 7] and 1 [7, 6, 4, 9, 0, 1] are the same set, as published
    assert parse_openset("standard:0", "cifar10").known == parse_openset("standard:1", "cifar10").known \
        == (0, 1, 4, 6, 7, 9)
    assert parse_openset("standard:4", "cifar10n").known == (1, 2, 4, 6, 7, 9)


def test_random_known_and_vs_forms() -> None:
    a, b = parse_openset("random:4:0", "mnist"), parse_openset("random:4:1", "mnist")
    assert len(a.unknown) == 4 and len(a.known) == 6 and a == parse_openset("random:4:0", "mnist")
    assert a.known != b.known
    assert parse_openset("known:5,0,3", "digits").known == (0, 3, 5)
    vs = parse_openset("vs:fashion_mnist", "mnist")
    assert vs.known == tuple(range(10)) and vs.unknown == () and vs.other == "fashion_mnist"


@pytest.mark.parametrize("spec, dataset, needle", [
    ("standard:5", "mnist", "0..4"),
    ("standard:0", "digits", "no standard splits for digits"),
    ("bogus:1", "mnist", "valid: standard:N"),
    ("known:0,1,1", "mnist", "class 1 is listed twice"),
    ("known:0,1,10", "mnist", "class 10 is out of range"),
    ("known:0", "mnist", "at least one unknown"),
    ("random:9:0", "mnist", "valid: 1..8"),
    ("vs:cifar10", "mnist", "same image shape"),
    ("vs:mnist", "mnist", "another dataset"),
])
def test_bad_splits_name_the_problem(spec: str, dataset: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        build_config(dataset, "ce", {"openset": spec})


def test_a_split_trains_on_the_known_classes_relabelled_and_tests_on_all() -> None:
    data = load_dataset("digits", Path("."))
    train, test = data.train_labels.numpy(), data.test_labels.numpy()
    p = prepare(build_config("digits", "ce", {"openset": "known:2,4,6,7,8,9", "epochs": 1}), torch.device("cpu"))
    known_train = np.isin(train, [2, 4, 6, 7, 8, 9])
    assert p.n_train == known_train.sum() and p.num_classes == 6
    # labels 2,4,6,7,8,9 -> 0..5 in order: the clean labels trained on are the mapped originals
    np.testing.assert_array_equal(p.train_clean.numpy(), np.searchsorted([2, 4, 6, 7, 8, 9], train[known_train]))
    first_known = int(np.flatnonzero(known_train)[0])  # the images are those of the known samples, in order
    np.testing.assert_array_equal(p.train.images[0].numpy(), data.train_images[first_known].numpy())
    assert p.evals["test"][2] == np.isin(test, [2, 4, 6, 7, 8, 9]).sum()  # closed-set test: known only
    assert len(p.openset.is_unknown) == 540 and p.openset.is_unknown.sum() == np.isin(test, [0, 1, 3, 5]).sum()
    assert (p.openset.known_label[p.openset.is_unknown] == -1).all()
    search = prepare(build_config("digits", "ce", {"openset": SIX, "val_fraction": 0.2}), torch.device("cpu"), False)
    assert search.openset is None and "test" not in search.evals  # an Optuna search never sees the test set


def test_relabel_keeps_unknown_training_samples_with_random_known_labels() -> None:
    data = load_dataset("digits", Path("."))
    train = data.train_labels.numpy()
    config = build_config("digits", "drainage", {"openset": SIX, "openset_unknown_train": "relabel", "epochs": 1})
    p = prepare(config, torch.device("cpu"))
    relabelled = p.train_relabelled.numpy()
    assert p.n_train == 1257 and (relabelled == (train >= 6)).all()
    labels = p.train_labels.numpy()
    assert set(labels[relabelled]) == set(range(6))  # uniform over the known classes: all of them drawn
    np.testing.assert_array_equal(labels[~relabelled], train[~relabelled])
    with pytest.raises(UserError, match="relabel"):
        build_config("digits", "ce", {"openset_unknown_train": "relabel"})


@pytest.mark.slow
def test_an_open_set_drainage_trial_scores_every_test_sample_and_records_the_metrics(tmp_path: Path) -> None:
    config = build_config("digits", "drainage", {"openset": SIX, "epochs": 1, "drainage_logit": 2.0})
    result = run_trial(config)
    assert result.status == "ok"
    test = load_dataset("digits", Path(".")).test_labels.numpy()
    scores = result.openset
    assert len(scores["is_unknown"]) == 540 and scores["is_unknown"].sum() == (test >= 6).sum()
    np.testing.assert_array_equal(scores["label"], np.concatenate([test[test < 6], test[test >= 6]]))
    assert scores["pred"].max() <= 5  # predictions over the 6 known classes
    assert ((scores["score_pd"] > 0) & (scores["score_pd"] < 1)).all()
    assert (scores["score_msp"] >= -1).all() and (scores["score_msp"] <= -1 / 6).all()
    s = result.summary
    assert s["openset_closed_acc"] == pytest.approx(s["final_test_acc"])  # the closed-set test set
    assert s["openset_drain_rejects_unknown"] == pytest.approx(scores["drained"][scores["is_unknown"]].mean())
    assert 0 <= s["openset_auroc_pd"] <= 1 and 0 <= s["openset_oscr_pd"] <= s["openset_closed_acc"]
    store = ResultsStore(tmp_path, "os")
    store.write_trial(result.record(), result.epochs, result.samples, result.noise, openset=result.openset)
    assert len(store.openset()) == 540 and store.trials().iloc[0]["openset"] == SIX
    # a rerun without scores (e.g. failed) must not keep the old ones
    store.write_trial(result.record(), result.epochs, result.samples)
    assert store.openset().empty


def test_spec_openset_is_a_grid_axis() -> None:
    spec = parse_spec({"dataset": "mnist", "seeds": [0, 1], "openset": ["standard:0", "standard:1", "standard:2"],
                       "losses": [{"name": "ce"}, {"name": "drainage", "set": {"drainage_logit": 2.0}}],
                       "noise": [{"type": "none"}]}, name="os")
    configs = spec.expand()
    assert len(configs) == 2 * 3 * 2 and len({c.trial_id for c in configs}) == 12
    assert [c.openset for c in configs[:6]] == ["standard:0"] * 2 + ["standard:1"] * 2 + ["standard:2"] * 2
    assert build_config("mnist", "ce").trial_id == build_config("mnist", "ce", {"openset": ""}).trial_id
    with pytest.raises(UserError, match="'openset' must be"):
        parse_spec({"dataset": "mnist", "openset": [3], "losses": [{"name": "ce"}], "noise": [{"type": "none"}]}, "x")


def test_svhn_reads_torchvision_mat_files_and_maps_label_10_to_0(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    (tmp_path / "SVHN").mkdir()
    images = {}
    for split, n in (("train", 12), ("test", 5)):
        images[split] = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        labels = (np.arange(n) % 10 + 1).reshape(-1, 1)  # 1..10, 10 meaning the digit 0
        savemat(tmp_path / "SVHN" / f"{split}_32x32.mat", {"X": images[split], "y": labels})
    data = load_dataset("svhn", tmp_path)
    assert data.train_images.shape == (12, 3, 32, 32) and data.test_images.shape == (5, 3, 32, 32)
    assert data.train_labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    # pixel (row 4, column 7, green) of image 3
    assert data.train_images[3, 1, 4, 7] == images["train"][4, 7, 1, 3]
    broken = tmp_path / "broken" / "SVHN"
    broken.mkdir(parents=True)
    (broken / "train_32x32.mat").write_bytes((tmp_path / "SVHN" / "train_32x32.mat").read_bytes())
    (broken / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match="test_32x32.mat is not a readable MATLAB file"):
        load_dataset("svhn", broken.parent)


@pytest.mark.parametrize("args, needle", [
    (["--set", "openset=bogus:1"], "openset='bogus:1' is invalid"),
    (["--set", "openset=known:0,1,1"], "class 1 is listed twice"),
    (["--set", "openset=known:0,1,12"], "class 12 is out of range"),
    (["--dataset", "mnist", "--set", "openset=vs:cifar10"], "same image shape"),
    (["--loss", "drainage", "--set", f"openset={SIX}", "--set", "drainage_logit="],
     "a constant drainage logit has no default"),
])
def test_bad_open_set_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, args, needle) -> None:
    out = subprocess.run([*CLI, "train", "--epochs", "1", "--results", "res", *args], cwd=tmp_path,
                         capture_output=True, text=True)
    assert_user_error(out, needle, tmp_path / "res")


def test_a_spec_with_a_bad_split_stops_before_anything_is_written(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('dataset = "mnist"\nopenset = ["standard:0", "standard:7"]\n'
                    '[[noise]]\ntype = "none"\n[[losses]]\nname = "ce"\n')
    out = subprocess.run([*CLI, "sweep", str(spec), "--results", "res"], cwd=tmp_path, capture_output=True, text=True)
    assert_user_error(out, "openset='standard:7' is invalid: standard:N takes a split number N in 0..4", tmp_path / "res")


def test_table_shows_several_open_set_metrics_over_splits_and_seeds(tmp_path: Path) -> None:
    from results_helpers import record, write_rows
    from typer.testing import CliRunner

    from drainage_bench.cli import app

    # By hand: CE AUROC(MSP) over 2 splits x 2 seeds 0.80, 0.82, 0.84, 0.86 -> 83.00 ± 2.58
    # (sample std: sqrt((9 + 1 + 1 + 9) / 3 / 10^4) = 0.02582); Drainage AUROC(MSP) 0.90 x 4 -> 90.00 ± 0.00,
    # AUROC(p_d) 0.95, 0.97, 0.95, 0.97 -> 96.00 ± 1.15; CE has no p_d: n/a
    rows = []
    for i, (split, seed) in enumerate([("standard:0", 0), ("standard:0", 1), ("standard:1", 0), ("standard:1", 1)]):
        tag = f"{split[-1]}{seed}"
        rows.append(record("ce", "CE", "none", 0.0, seed, 0.9, suffix=f"ce{tag}", openset=split,
                           openset_auroc_msp=0.80 + 0.02 * i))
        rows.append(record("drainage", "Drainage", "none", 0.0, seed, 0.9, suffix=f"dr{tag}", openset=split,
                           openset_auroc_msp=0.90, openset_auroc_pd=0.95 + 0.02 * (i % 2)))
    write_rows(tmp_path, rows, sweep="os")
    out = CliRunner().invoke(app, ["table", "os", "--results", str(tmp_path), "--format", "csv",
                                   "--metric", "openset_auroc_msp,openset_auroc_pd"])
    assert out.exit_code == 0, out.output
    import io

    import pandas as pd

    table = pd.read_csv(io.StringIO(out.output)).set_index(["loss", "metric"])
    assert table.loc[("CE", "openset_auroc_msp"), "mean_pct"] == pytest.approx(83.0)
    assert table.loc[("CE", "openset_auroc_msp"), "std_pct"] == pytest.approx(2.5820, abs=1e-3)
    assert table.loc[("CE", "openset_auroc_msp"), "n"] == 4  # 2 splits x 2 seeds, not "two trials per seed"
    assert table.loc[("Drainage", "openset_auroc_pd"), "mean_pct"] == pytest.approx(96.0)
    assert table.loc[("Drainage", "openset_auroc_msp"), "rank"] == 1
    assert table.loc[("CE", "openset_auroc_pd"), "n"] == 0 and table.loc[("CE", "openset_auroc_pd"), "n_na"] == 1
    md = CliRunner().invoke(app, ["table", "os", "--results", str(tmp_path), "--format", "markdown",
                                  "--metric", "openset_auroc_msp", "--metric", "openset_auroc_pd"]).output
    assert "| Loss | AUROC MSP | AUROC p\\_d |" in md and "over 4 runs (open-set splits × seeds)" in md
    assert "| CE | *83.00 ± 2.58* | n/a |" in md and "| Drainage | **90.00 ± 0.00** | 96.00 ± 1.15 |" in md
    from drainage_bench.analysis import tables as T

    # --compare-to pairs runs by (split, seed): Drainage - CE = 0.10, 0.08, 0.06, 0.04 -> mean 0.07 over 4 pairs
    selection = T.load_selection(tmp_path, ["os"])
    data = T.add_comparison(T.aggregate(selection, "openset_auroc_msp"), selection, "CE")
    cell = data.cells.loc[("Drainage", "digits:clean")]
    assert cell["n_pairs"] == 4 and cell["diff"] == pytest.approx(0.07)


def _scores(known: list[float], unknown: list[float], pd_: bool) -> dict:
    n_k, n_u = len(known), len(unknown)
    score = np.array(known + unknown)
    return {"is_unknown": np.array([False] * n_k + [True] * n_u), "label": np.zeros(n_k + n_u, dtype=np.int64),
            "known_label": np.array([0] * n_k + [-1] * n_u), "pred": np.zeros(n_k + n_u, dtype=np.int64),
            "score_msp": score - 1, "score_maxlogit": score, "score_pd": score if pd_ else np.full(n_k + n_u, np.nan),
            "drained": score > 0.5}


def test_open_set_figures_from_the_stored_scores(tmp_path: Path) -> None:
    from results_helpers import record

    from drainage_bench.analysis import openset_plots as P
    from drainage_bench.analysis.plots import make_figures
    from drainage_bench.analysis.tables import load_selection

    store = ResultsStore(tmp_path, "os")
    # CE separates perfectly (knowns 0.1, 0.2 below unknowns 0.3, 0.4); drainage's scores all tie
    for loss, name, scores in (("ce", "CE", _scores([0.1, 0.2], [0.3, 0.4], False)),
                               ("drainage", "Drainage", _scores([0.5, 0.5], [0.5, 0.5], True))):
        store.write_trial(record(loss, name, "none", 0.0, 0, 0.9, sweep="os", openset="standard:0"), [], None, openset=scores)
    selection = load_selection(tmp_path, ["os"])
    loaded = P.load_scores(selection, P._openset_trials(selection))
    ce_curve, _, ce_auc = P._mean_roc(loaded[loaded["row"] == "CE"], "score_msp")
    assert ce_auc == [1.0] and (ce_curve[P.FPR_GRID > 0] == 1).all()  # every unknown rejected at once
    dr_curve, _, dr_auc = P._mean_roc(loaded[loaded["row"] == "Drainage"], "score_pd")
    assert dr_auc == [0.5] and np.allclose(dr_curve, P.FPR_GRID)  # ties: the diagonal
    assert P.relabel_histograms(selection) is None  # no relabel trial
    paths, notes = make_figures(selection, tmp_path / "fig")
    assert {p.name for p in paths} >= {"openset_roc.png", "openset_score_histograms.png"}
    assert any(n.startswith("openset_relabel: not drawn") for n in notes)


def test_a_trial_with_a_score_that_is_not_finite_is_left_out_of_the_roc_curves(tmp_path: Path) -> None:
    # sklearn's roc_curve raises on infinity (the whole plot failed); its metrics are NaN (metrics.openset)
    from results_helpers import record

    from drainage_bench.analysis import openset_plots as P
    from drainage_bench.analysis.tables import load_selection

    store = ResultsStore(tmp_path, "os")
    broken = _scores([0.1, 0.2], [0.3, 0.4], False)
    broken["score_maxlogit"] = np.array([0.1, np.inf, 0.3, 0.4])
    for seed, scores in ((0, _scores([0.1, 0.2], [0.3, 0.4], False)), (1, broken)):
        store.write_trial(record("ce", "CE", "none", 0.0, seed, 0.9, sweep="os", openset="standard:0"), [], None,
                          openset=scores)
    fig = P.roc_curves(load_selection(tmp_path, ["os"]))
    legends = {ax.get_title(): [t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes
               if ax.get_legend()}
    assert legends["score: max logit"] == ["CE: AUROC 100.00 (n = 1)"]  # seed 1 left out
    assert legends["score: MSP"] == ["CE: AUROC 100.00 (n = 2)"]


def test_the_relabel_figure_pools_the_training_and_test_samples_of_each_loss(tmp_path: Path) -> None:
    from results_helpers import record

    from drainage_bench.analysis import openset_plots as P
    from drainage_bench.analysis.tables import load_selection

    store = ResultsStore(tmp_path, "os")
    samples = {"drainage_prob": np.array([0.1, 0.2, 0.9]), "is_noisy": np.array([False, False, True]),
               "is_relabelled": np.array([False, False, True])}
    for seed in (0, 1):
        store.write_trial(record("drainage", "Drainage", "none", 0.0, seed, 0.9, sweep="os", openset="standard:0",
                                 openset_unknown_train="relabel"), [], samples,
                          openset=_scores([0.1, 0.2], [0.8, 0.9], True))
    fig = P.relabel_histograms(load_selection(tmp_path, ["os"]))
    (ax,) = [a for a in fig.axes if a.get_visible()]
    # by hand, 2 seeds pooled: train known 0.1, 0.2 x2 (mean 0.15), relabelled 0.9 x2; test known
    # 0.1, 0.2 x2, unknown 0.8, 0.9 x2 (mean 0.85); every group's bars sum to 100%
    assert ax.get_title() == "Drainage (2 runs)"
    assert [p.get_label() for p in ax.patches] == [
        "train: known classes (n = 4, mean 0.15)", "train: unknown classes, relabelled (n = 2, mean 0.90)",
        "test: known classes (n = 4, mean 0.15)", "test: unknown classes (n = 4, mean 0.85)"]
    assert [round(float(p.get_data().values.sum()), 9) for p in ax.patches] == [100.0] * 4


def test_mnist_vs_fashion_mnist_tests_on_both_test_sets(data_root: Path) -> None:
    from conftest import require_file

    require_file(data_root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz")
    config = build_config("mnist", "ce", {"openset": "vs:fashion_mnist", "data_root": str(data_root)})
    p = prepare(config, torch.device("cpu"))
    fashion = load_dataset("fashion_mnist", data_root)
    assert p.n_train == 60000 and p.num_classes == 10 and p.evals["test"][2] == 10000
    assert len(p.openset.is_unknown) == 20000 and int(p.openset.is_unknown.sum()) == 10000
    assert torch.equal(p.openset.images[10000:], fashion.test_images)
    assert torch.equal(p.openset.label[10000:], fashion.test_labels)


def test_a_cross_dataset_sweep_without_the_other_dataset_stops_before_ray(tmp_path: Path) -> None:
    from test_data import write_fake_mnist

    write_fake_mnist(tmp_path / "data")  # MNIST only, no Fashion-MNIST
    spec = tmp_path / "vs.toml"
    spec.write_text('dataset = "mnist"\nopenset = "vs:fashion_mnist"\n[[noise]]\ntype = "none"\n'
                    '[[losses]]\nname = "ce"\n')
    out = subprocess.run([*CLI, "sweep", str(spec), "--results", "res", "--data-root", "data"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert_user_error(out, "dataset 'fashion_mnist' is not available", tmp_path / "res")


class _FixedLogits:
    """A stand-in for the trainer's Forward: the logits of row i are LOGITS[i] (the images carry i)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.model = torch.nn.Linear(1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[images[:, 0, 0, 0].long()]


def test_open_set_scores_of_fixed_logits_by_hand() -> None:
    from drainage_bench.trainer.openset import OpenSetTest, openset_scores

    # two known classes and a drainage column; row 2 ties z_d with the top class (not drained);
    # rows 3 and 4 lead by 40 and 20: float32 rounds both MSPs to 1 (a tie), float64 keeps 1 - e^-20 < 1
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 5.0], [1.0, 1.0, 1.0], [40.0, 0.0, -5.0], [20.0, 0.0, -5.0]])
    n = len(logits)
    test = OpenSetTest(images=torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
                       is_unknown=torch.tensor([False, True, True, False, True]), label=torch.tensor([0, 7, 8, 0, 9]),
                       known_label=torch.tensor([0, -1, -1, 0, -1]))
    s = openset_scores(_FixedLogits(logits), test, num_classes=2, batch_size=2, drainage=True)
    e = np.exp
    np.testing.assert_allclose(s["score_msp"], [-1 / (1 + e(-2)), -1 / (1 + e(-3)), -0.5, -1 / (1 + e(-40)),
                                                -1 / (1 + e(-20))], rtol=1e-12)
    assert s["score_msp"][3] < s["score_msp"][4]  # the more confident sample is the less unknown one
    np.testing.assert_array_equal(s["score_maxlogit"], [-2.0, -3.0, -1.0, -40.0, -20.0])
    np.testing.assert_allclose(s["score_pd"], [e(1) / (e(2) + 1 + e(1)), e(5) / (1 + e(3) + e(5)), 1 / 3,
                                               e(-5) / (e(40) + 1 + e(-5)), e(-5) / (e(20) + 1 + e(-5))], rtol=1e-6)
    np.testing.assert_array_equal(s["drained"], [False, True, False, False, False])
    np.testing.assert_array_equal(s["pred"], [0, 1, 0, 0, 0])


@pytest.mark.parametrize("spec", ["standard:\u00b2", "standard:01", "known:0,1,\u00b2", "random:\u00b2:0", "random:4:07"])
def test_split_numbers_are_plain_ascii_integers(spec: str) -> None:
    with pytest.raises(UserError, match="is invalid"):
        parse_openset(spec, "mnist")


@pytest.mark.slow
def test_corruptions_of_an_open_set_trial_are_of_its_known_classes(monkeypatch) -> None:
    # digits' test set has 540 images; the 6 known classes 0..5 hold (test < 6).sum() of them
    from drainage_bench.trainer import corruptions as C

    given, cells = [], C.cells
    monkeypatch.setattr(C, "cells", lambda config, images, labels, *rest: (given.append(labels.clone()),
                                                                          cells(config, images, labels, *rest))[1])
    config = build_config("digits", "ce", {"openset": SIX, "epochs": 1, "corruptions": "synthetic"})
    result = run_trial(config)
    assert result.status == "ok", result.error
    n_known = int((load_dataset("digits", Path(".")).test_labels < 6).sum())
    assert len(given) == 1 and len(given[0]) == n_known and int(given[0].max()) == 5  # the known classes only
    assert 0 < n_known < 540 and len(result.corruptions) == 11 * 5
    assert all(0 <= row["error"] <= 1 for row in result.corruptions)
    with pytest.raises(UserError, match="the released files label every class"):
        build_config("cifar10", "ce", {"openset": "standard:0", "corruptions": "cifar10-c"})

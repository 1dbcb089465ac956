"""Inspecting studies: `study list | show | plot`, on studies written here trial by trial.

The trials are made with optuna.create_trial (values chosen by hand), so no training runs; the
command line runs in fresh processes, as a user would run it after a search.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from drainage_bench.sweeps import studies
from drainage_bench.errors import UserError
from drainage_bench.sweeps.search import open_storage

CLI = [sys.executable, "-m", "drainage_bench.cli"]
SPACE = {"alpha": FloatDistribution(1e-3, 1e2, log=True), "beta": FloatDistribution(1e-3, 1e2, log=True)}
# (state, value, alpha, beta); the value depends on alpha only: fANOVA must rank alpha first.
TRIALS = [
    (TrialState.COMPLETE, 0.70, 1.0, 1.0),
    (TrialState.COMPLETE, 0.90, 30.0, 0.01),
    (TrialState.PRUNED, 0.40, 0.01, 3.0),
    (TrialState.COMPLETE, 0.80, 10.0, 5.0),
    (TrialState.FAIL, None, 0.002, 0.2),
    (TrialState.COMPLETE, 0.60, 0.1, 0.02),
    (TrialState.COMPLETE, 0.90, 30.0, 2.0),
    (TrialState.COMPLETE, 0.65, 0.3, 50.0),
]


def make_study(url: str, name: str, trials=TRIALS) -> None:
    study = optuna.create_study(storage=open_storage(url), study_name=name, direction="maximize")
    study.set_user_attr("objective", "final_val_acc")
    for i, (state, value, alpha, beta) in enumerate(trials):
        steps = {1: value / 2, 2: value} if value is not None else {}
        if state == TrialState.PRUNED:
            steps = {1: value}
        study.add_trial(optuna.create_trial(
            state=state, value=value if state != TrialState.FAIL else None, params={"alpha": alpha, "beta": beta},
            distributions=SPACE, intermediate_values=steps,
            user_attrs={"recipe_defaults": i == 0, "epochs_run": len(steps), "wall_seconds": 3.0}))


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('studies') / 'optuna.db'}"
    make_study(url, "digits-drainage-asym0.4")
    make_study(url, "digits-gce-sym0.2", [(TrialState.PRUNED, 0.5, 1.0, 1.0), (TrialState.RUNNING, None, 2.0, 2.0)])
    return url


def test_list_counts_states_and_finds_the_best_trial(url: str) -> None:
    rows = {row.name: row for row in studies.list_studies(url)}
    drainage, gce = rows["digits-drainage-asym0.4"], rows["digits-gce-sym0.2"]
    assert drainage.counts == {"complete": 6, "pruned": 1, "fail": 1, "running": 0}
    assert (drainage.best_value, drainage.best_number, drainage.best_params) == (0.90, 1, {"alpha": 30.0, "beta": 0.01})
    assert gce.counts == {"complete": 0, "pruned": 1, "fail": 0, "running": 1}
    assert (gce.best_value, gce.best_params) == (None, {})


def test_best_trials_recipe_trial_and_importances(url: str) -> None:
    study = studies.load(url, "digits-drainage-asym0.4")
    assert [t.number for t in studies.best_trials(study, 3)] == [1, 6, 3]  # ties: the earlier first
    assert studies.recipe_trial(study).number == 0
    scores, why = studies.importances(study)
    assert why is None and max(scores, key=scores.get) == "alpha"
    empty, why = studies.importances(studies.load(url, "digits-gce-sym0.2"))
    assert empty == {} and "at least 2 complete trials" in why


def test_missing_storage_and_unknown_study_are_user_errors(url: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no Optuna storage"):
        studies.list_studies(f"sqlite:///{tmp_path / 'none.db'}")
    assert not (tmp_path / "none.db").exists()  # looking does not create it
    with pytest.raises(UserError, match="valid: digits-drainage-asym0.4, digits-gce-sym0.2"):
        studies.load(url, "digits-drainage")


def test_plot_writes_the_figures(url: str, tmp_path: Path) -> None:
    paths = studies.plot_study(studies.load(url, "digits-drainage-asym0.4"), tmp_path / "fig")
    assert sorted(p.name for p in paths) == ["history.png", "landscape.png", "learning_curves.png", "slices.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in paths)
    with pytest.raises(UserError, match="no complete trial"):
        studies.plot_study(studies.load(url, "digits-gce-sym0.2"), tmp_path / "none")


def test_the_figures_show_the_study_s_trials(url: str) -> None:
    """What is drawn, against the hand-made TRIALS: the complete values in trial order, the best
    so far, alpha (the one that matters) on the landscape's x axis, and a curve per trial with
    epochs, the pruned one stopping after its first."""
    import matplotlib.pyplot as plt

    figures = studies.study_figures(studies.load(url, "digits-drainage-asym0.4"))
    complete = [(n, v) for n, (state, v, _, _) in enumerate(TRIALS) if state == TrialState.COMPLETE]
    history = figures["history"].axes[0]
    points = [c.get_offsets().tolist() for c in history.collections if len(c.get_offsets())]
    assert [[n, v] for n, v in complete] in points
    best_so_far = [max(v for m, v in complete if m <= n) for n in range(len(TRIALS))]
    assert best_so_far in [list(line.get_ydata()) for line in history.get_lines()]
    landscape = figures["landscape"].axes[0]
    assert (landscape.get_xlabel(), landscape.get_ylabel()) == ("alpha", "beta")
    curves = figures["learning_curves"].axes[0].get_lines()
    with_steps = [t for t in TRIALS if t[0] in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sorted(len(line.get_xdata()) for line in curves) == sorted(
        1 if state == TrialState.PRUNED else 2 for state, *_ in with_steps)
    for figure in figures.values():
        plt.close(figure)


@pytest.mark.slow
def test_study_commands_work_from_a_fresh_process(url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "study", *args, "--storage", url], capture_output=True, text=True)

    listing = run("list")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split()[1:] for line in listing.stdout.splitlines()[1:]}
    assert rows["digits-drainage-asym0.4"][:7] == ["6", "1", "1", "0", "90.00", "#1", "alpha=30"]

    shown = run("show", "digits-drainage-asym0.4", "--top", "2")
    assert shown.returncode == 0, shown.stderr
    table = [line.split() for line in shown.stdout.splitlines() if line.strip().startswith("#")]
    assert [row[:2] for row in table] == [["#1", "90.00"], ["#6", "90.00"]]
    assert "recipe values (#0): val 70.00%" in shown.stdout
    assert "importances: alpha" in shown.stdout
    assert f"optuna-dashboard {url}" in shown.stdout

    plotted = run("plot", "digits-drainage-asym0.4", "--out", str(tmp_path / "png"))
    assert plotted.returncode == 0, plotted.stderr
    assert len(list((tmp_path / "png").glob("*.png"))) == 4

    unknown = run("show", "nope")
    assert unknown.returncode == 2 and "no study 'nope'" in unknown.stderr

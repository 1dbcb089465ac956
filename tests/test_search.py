"""The Optuna search (`drainage-bench tune`): spaces, the study, pruning, resuming, tuned params.

Trials train on digits for 2-3 epochs; searches run in this process (one worker) except the
SIGKILL test, which runs the real command line on Ray.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from drainage_bench.errors import UserError
from drainage_bench.sweeps import search as S
from drainage_bench.sweeps.spec import parse_spec
from drainage_bench.trainer import loop
from drainage_bench.trainer.losses import LOSSES, loss_defaults

CLI = [sys.executable, "-m", "drainage_bench.cli"]
NAME = "digits-drainage-asym0.4"


def quiet(_: str) -> None:
    pass


def states(url: str, name: str = NAME) -> list[TrialState]:
    """The study's trial states ([] before the study exists)."""
    try:
        study = optuna.load_study(study_name=name, storage=S.open_storage(url))
    except KeyError:
        return []
    return [t.state for t in study.get_trials(deepcopy=False)]


# ---------------------------------------------------------------------------------------------
# Spaces and settings (no training)


def test_distributions_parse_from_the_command_line_syntax() -> None:
    assert S.parse_distribution("loguniform:1e-3:1e2", "x") == FloatDistribution(1e-3, 100.0, log=True)
    assert S.parse_distribution("uniform:0.05:1", "x") == FloatDistribution(0.05, 1.0)
    assert S.parse_distribution("choice:none,0.5,2", "x") == CategoricalDistribution([None, 0.5, 2])
    for bad in ("loguniform:0:1", "uniform:2:1", "normal:0:1", "loguniform:1", "choice:", "uniform:a:b"):
        with pytest.raises(UserError, match="valid: loguniform"):
            S.parse_distribution(bad, "--space alpha")


def test_space_overrides_replace_add_and_remove_parameters() -> None:
    assert set(S.load_space("drainage")) == {"alpha", "beta"}
    space = S.load_space("drainage", ["alpha=loguniform:0.01:10", "beta=off", "l1_delta=loguniform:1e-7:1e-3"])
    assert space == {"alpha": FloatDistribution(0.01, 10.0, log=True),
                     "l1_delta": FloatDistribution(1e-7, 1e-3, log=True)}
    with pytest.raises(UserError, match="malformed"):
        S.load_space("drainage", ["alpha"])
    with pytest.raises(UserError, match="not searched"):
        S.load_space("gce", ["beta=off"])


def test_every_loss_with_parameters_ships_a_valid_space() -> None:
    with_params = {name for name in LOSSES if loss_defaults(name)}
    assert set(S.shipped_spaces()) == with_params
    searched = {loss: set(S.make_search("digits", loss, "asym:0.4", overrides={"epochs": 2}).space)
                for loss in with_params}  # make_search checks that both ends of every range are valid
    # as written in spaces/default.toml
    assert searched["gce"] == {"q"} and searched["drainage"] == {"alpha", "beta"}
    assert searched["anl_ce"] == {"alpha", "beta", "l1_delta"} and searched["nce_agce"] == {"alpha", "beta", "a", "q"}
    with pytest.raises(UserError, match="nothing to search"):
        S.make_search("digits", "ce", "asym:0.4")


def test_bad_spaces_and_settings_are_one_line_errors() -> None:
    with pytest.raises(UserError, match=r"reaches an invalid value.*q"):
        S.make_search("digits", "gce", "sym:0.2", space=["q=uniform:0:1"])  # q = 0 is outside (0, 1]
    with pytest.raises(UserError, match="neither a parameter"):
        S.make_search("digits", "gce", "sym:0.2", space=["qq=uniform:0.1:1"])
    with pytest.raises(UserError, match="no validation part"):
        S.make_search("digits", "gce", "sym:0.2", overrides={"val_fraction": 0.0})
    with pytest.raises(UserError, match="unknown pruner"):
        S.make_search("digits", "gce", "sym:0.2", pruner="asha")
    with pytest.raises(UserError, match="unknown objective"):
        S.make_search("digits", "gce", "sym:0.2", objective="final_test_acc")


def test_search_base_is_the_80_20_split_with_the_requested_noise_and_labels() -> None:
    search = S.make_search("digits", "drainage", "asym:0.4", val_labels="noisy", seed=3)
    base = search.base
    assert (base.val_fraction, base.val_labels, base.noise, base.noise_rate, base.seed) == (0.2, "noisy", "asym", 0.4, 3)
    assert search.name == NAME
    # the recipe's values (digits: alpha = beta = 1) become the study's first trial
    assert search.recipe_values() == {"alpha": 1.0, "beta": 1.0}
    # sampled values land in the loss parameters, or in trial fields for l1_delta
    anl = S.make_search("digits", "anl_ce", "sym:0.2")
    config = anl.trial_config({"alpha": 5.0, "beta": 0.5, "l1_delta": 1e-4})
    assert (config.params, config.l1_delta) == ({"alpha": 5.0, "beta": 0.5}, 1e-4)
    assert anl.realized(config) == {"alpha": 5.0, "beta": 0.5, "l1_delta": 1e-4}


def test_plan_tune_takes_dataset_losses_noise_and_settings_from_a_spec() -> None:
    plan = S.plan_tune("mnist-asym", ["drainage"], overrides={"epochs": 2})
    assert [s.name for s in plan.searches] == [f"mnist-drainage-asym{r}" for r in ("0.1", "0.2", "0.3", "0.4")]
    assert plan.resources["cpus_per_trial"] == 2
    with pytest.raises(UserError, match="no loss with params"):
        S.plan_tune("mnist-asym")
    with pytest.raises(UserError, match="name --loss and --noise"):
        S.plan_tune("digits", ["drainage"])
    with pytest.raises(UserError, match="neither a sweep nor a dataset"):
        S.plan_tune("digitz", ["drainage"], ["none"])


def test_a_spec_loss_entry_carries_its_search_ranges(tmp_path: Path) -> None:
    spec = tmp_path / "ranges.toml"
    spec.write_text("""
dataset = "digits"
[[noise]]
type = "asym"
rates = [0.4]
[[losses]]
name = "drainage"
params = "tuned"
space = { alpha = "loguniform:0.5:2", beta = "off" }
""")
    (search,) = S.plan_tune(str(spec), overrides={"epochs": 2}).searches
    assert set(search.space) == {"alpha"}
    assert (search.space["alpha"].low, search.space["alpha"].high, search.space["alpha"].log) == (0.5, 2.0, True)
    (wider,) = S.plan_tune(str(spec), overrides={"epochs": 2}, space=["alpha=loguniform:0.1:10"]).searches
    assert (wider.space["alpha"].low, wider.space["alpha"].high) == (0.1, 10.0)  # the command line wins


def test_storage_urls() -> None:
    assert S.resolve_storage(None, "res") == f"sqlite:///{Path('res').resolve() / 'optuna.db'}"
    assert S.resolve_storage("studies.journal") == str(Path("studies.journal").resolve())
    assert S.resolve_storage("postgresql://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(UserError, match="sqlite:///x.db"):
        S.resolve_storage("x.db")


# ---------------------------------------------------------------------------------------------
# Heartbeats (no training)


def test_running_trials_of_a_stopped_driver_are_failed_and_queued_once_more(tmp_path: Path) -> None:
    search = S.make_search("digits", "drainage", "asym:0.4", overrides={"epochs": 2}, heartbeat=5)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    dead = subprocess.Popen(["true"])
    dead.wait()
    now = time.time()
    stamps = {  # host, pid, seconds ago -> stale?
        "here, dead pid": ("this-host", dead.pid, 0, True),
        "here, this very process (an earlier run with the same pid)": ("this-host", os.getpid(), 0, True),
        "elsewhere, fresh": ("other-host", 1, 2, False),
        "elsewhere, silent for 3 beats": ("other-host", 1, 16, True),
    }
    storage = S.open_storage(url)
    study = S.open_study(search, storage, url)
    study.ask()  # the recipe trial, left RUNNING without any stamp: stale only once 3 beats old
    for host, pid, ago, _ in stamps.values():
        trial = study.ask(search.space)
        storage.set_trial_system_attr(trial._trial_id, S.HEARTBEAT_ATTR,
                                      {"host": host, "pid": pid, "time": now - ago, "every": 5})
    owner = S.StudyOwner(search, url, ("this-host", os.getpid()))
    try:
        failed = owner.fail_stale()
    finally:
        owner.close()
    expected = [i + 1 for i, (*_, stale) in enumerate(stamps.values()) if stale]
    assert failed == expected
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials[:5]] == [TrialState.RUNNING] + [
        TrialState.FAIL if s else TrialState.RUNNING for *_, s in stamps.values()]
    retries = trials[5:]
    assert [t.state for t in retries] == [TrialState.WAITING] * len(expected)
    assert [t.params for t in retries] == [trials[n].params for n in expected]


# ---------------------------------------------------------------------------------------------
# Searches in this process


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[S.Search, str]:
    """A finished in-process search: 3 complete trials, 2 epochs each."""
    url = f"sqlite:///{tmp_path_factory.mktemp('study') / 'optuna.db'}"
    search = S.make_search("digits", "drainage", "asym:0.4", overrides={"epochs": 2}, trials=3, pruner="none")
    S.run_search(search, url, emit=quiet)
    return search, url


@pytest.mark.slow
def test_study_holds_the_requested_complete_trials_with_their_records(searched) -> None:
    search, url = searched
    study = optuna.load_study(study_name=NAME, storage=S.open_storage(url))
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].user_attrs["recipe_defaults"] is True and trials[0].params == {"alpha": 1.0, "beta": 1.0}
    for t in trials:
        config = search.trial_config(t.params)
        assert t.user_attrs["trial_id"] == config.trial_id
        assert t.user_attrs["params"] == config.params
        assert t.value == t.user_attrs["final_val_acc"] == t.intermediate_values[2]
        assert sorted(t.intermediate_values) == [1, 2]
    assert study.user_attrs["identity"]["epochs"] == 2 and study.user_attrs["objective"] == "final_val_acc"


@pytest.mark.slow
def test_running_again_tops_up_and_a_changed_setting_is_refused(searched, tmp_path: Path) -> None:
    search, url = searched
    copy = tmp_path / "copy.db"
    copy.write_bytes(Path(url.removeprefix("sqlite:///")).read_bytes())
    assert S.run_search(dataclasses.replace(search, trials=4), f"sqlite:///{copy}", emit=quiet)["complete"] == 4
    assert states(f"sqlite:///{copy}") == [TrialState.COMPLETE] * 4
    longer = S.make_search("digits", "drainage", "asym:0.4", overrides={"epochs": 3}, trials=3)
    with pytest.raises(UserError, match="was made with epochs=2, not 3"):
        S.run_search(longer, f"sqlite:///{copy}", emit=quiet)


@pytest.mark.slow
def test_tuned_params_give_the_best_trial_to_a_sweep_spec(searched) -> None:
    search, url = searched
    study = optuna.load_study(study_name=NAME, storage=S.open_storage(url))
    best = max(study.trials, key=lambda t: t.value)
    params, source = S.tuned_params(search.base, url)
    assert params == best.user_attrs["params"] and source == f"optuna:{NAME}#{best.number}"
    spec = parse_spec({"dataset": "digits", "seeds": [0, 1], "set": {"epochs": 2},
                       "noise": [{"type": "asym", "rates": [0.4]}],
                       "losses": [{"name": "drainage", "params": "tuned"}, {"name": "ce"}]}, name="t")
    configs = spec.expand(tuned=lambda c: S.tuned_params(c, url))
    drainage = [c for c in configs if c.loss == "drainage"]
    assert [c.params for c in drainage] == [best.user_attrs["params"]] * 2
    assert {c.params_source for c in drainage} == {source}
    assert drainage[0].val_fraction == 0.0  # the sweep itself trains on the whole training set
    other = search.base.replace(noise_rate=0.2)
    with pytest.raises(UserError, match="drainage-bench tune digits --loss drainage --noise asym:0.2"):
        S.tuned_params(other, url)


def garbage_test_split(load):
    """load_dataset, with test images and labels replaced by random values."""

    def wrapped(name, root, *args, **kwargs):
        data = load(name, root, *args, **kwargs)
        g = torch.Generator().manual_seed(0)
        return dataclasses.replace(
            data, test_images=torch.randint(0, 256, data.test_images.shape, dtype=torch.uint8, generator=g),
            test_labels=torch.randint(0, data.num_classes, data.test_labels.shape, generator=g))

    return wrapped


@pytest.mark.slow
def test_the_search_never_evaluates_on_the_test_set(tmp_path: Path, monkeypatch) -> None:
    def run(url: str) -> list[tuple]:
        search = S.make_search("digits", "gce", "asym:0.4", overrides={"epochs": 2}, trials=2, pruner="none")
        S.run_search(search, url, emit=quiet)
        study = optuna.load_study(study_name="digits-gce-asym0.4", storage=S.open_storage(url))
        return [(t.params, t.value, t.intermediate_values) for t in study.trials]

    sizes = []
    evaluate = loop._evaluate

    def counted(forward, batches, labels, *args):
        sizes.append(len(labels))
        return evaluate(forward, batches, labels, *args)

    monkeypatch.setattr(loop, "_evaluate", counted)
    clean = run(f"sqlite:///{tmp_path / 'clean.db'}")
    # 2 trials x 2 epochs, each on the validation part (20% of 1,257), never the 540 test images
    assert len(sizes) == 4 and len(set(sizes)) == 1 and 240 < sizes[0] < 260
    monkeypatch.setattr(loop, "load_dataset", garbage_test_split(loop.load_dataset))
    assert run(f"sqlite:///{tmp_path / 'garbage.db'}") == clean


class PruneOddTrials(optuna.pruners.BasePruner):
    """Prunes every odd-numbered trial at its first report."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1


@pytest.mark.slow
def test_pruned_trials_are_recorded_as_pruned_and_not_counted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    search = S.make_search("digits", "sce", "sym:0.2", overrides={"epochs": 2}, trials=2, pruner=PruneOddTrials())
    tally = S.run_search(search, url, emit=quiet)
    assert (tally["complete"], tally["pruned"]) == (2, 1)
    study = optuna.load_study(study_name="digits-sce-sym0.2", storage=S.open_storage(url))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    pruned = study.trials[1]
    assert list(pruned.intermediate_values) == [1]  # stopped after its first epoch
    assert pruned.value == pruned.intermediate_values[1]


# ---------------------------------------------------------------------------------------------
# SIGKILL, then the same command again (Ray, the real command line)


@pytest.mark.slow
def test_a_killed_search_resumes_to_exactly_the_requested_complete_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    command = [*CLI, "tune", "digits", "--loss", "drainage", "--noise", "asym:0.4", "--trials", "4",
               "--set", "epochs=2", "--storage", url, "--max-concurrent", "2", "--pruner", "none",
               "--heartbeat", "2"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    # Kill when two trials are complete and another is in flight (waited for, not assumed).
    while (now := states(url)).count(TrialState.COMPLETE) < 2 or TrialState.RUNNING not in now:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, f"no moment with 2 complete trials and one running: {now}"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    study = optuna.load_study(study_name=NAME, storage=S.open_storage(url))
    before = study.get_trials(deepcopy=True)
    running = [t.number for t in before if t.state == TrialState.RUNNING]
    done = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    assert running, "the kill should catch trials in flight"
    assert 2 <= len(done) < 4

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "left RUNNING by a stopped search" in again.stdout
    after = study.get_trials(deepcopy=True)
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    assert {t.number: t.value for t in complete if t.number in done} == done  # kept, not re-run
    assert all(after[n].state == TrialState.FAIL for n in running)
    assert {t.state for t in after} <= {TrialState.COMPLETE, TrialState.FAIL}
    # each lost trial was queued once more with its parameters; none was counted twice
    retried = {t.system_attrs["failed_trial"]: t for t in after if "failed_trial" in t.system_attrs}
    assert sorted(retried) == running
    assert all(retried[n].params == after[n].params for n in running)
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4

    listing = subprocess.run([*CLI, "study", "list", "--storage", url], capture_output=True, text=True)
    row = next(line.split() for line in listing.stdout.splitlines() if line.strip().startswith(NAME))
    assert row[1:5] == ["4", "0", str(len(running)), "0"]  # complete, pruned, failed, running

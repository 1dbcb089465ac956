"""Sweeps on a real Ray: resume after SIGKILL, failures recorded, bad input refused before Ray starts."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from drainage_bench.analysis.store import ResultsStore
from drainage_bench.sweeps.spec import load_spec, parse_spec
from drainage_bench.errors import UserError

CLI = [sys.executable, "-m", "drainage_bench.cli"]


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def write_spec(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


TINY = """
dataset = "digits"
seeds = [0, 1, 2]
set = {{ epochs = {epochs} }}

[resources]
cpus_per_trial = 1
max_concurrent = {concurrent}

[[noise]]
type = "asym"
rates = [0.2]

[[losses]]
name = "ce"

[[losses]]
name = "drainage"
"""


def expected_ids(spec_path: Path) -> set[str]:
    return {c.trial_id for c in load_spec(str(spec_path)).expand()}


@pytest.mark.slow
def test_sigkill_of_the_driver_then_resume_runs_only_the_missing_trials(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "tiny.toml", TINY.format(epochs=25, concurrent=1))
    store = ResultsStore(tmp_path / "results", "tiny")
    driver = subprocess.Popen([*CLI, "sweep", str(spec), "--results", "results"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(store.trial_ids()) < 2 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    before = store.trials()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 2 <= len(before) < 6, "the kill must land in the middle of the sweep"
    time.sleep(3)  # Ray's processes share the driver's fate; let them go

    done = run_cli("sweep", str(spec), "--results", "results", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    after = store.trials()
    assert set(after["trial_id"]) == expected_ids(spec)
    assert len(after) == len(expected_ids(spec)) == 6
    assert (after["status"] == "ok").all()
    # The trials recorded before the kill were not trained again: their records are untouched.
    kept = after.set_index("trial_id").loc[before["trial_id"], "finished_at"]
    assert list(kept) == list(before["finished_at"])
    # A third run has nothing to do.
    again = run_cli("sweep", str(spec), "--results", "results", cwd=tmp_path)
    assert again.returncode == 0 and "0 to run" in again.stdout.replace("\n", " ")


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_as_failed_and_the_others_finish(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "diverge.toml", """
dataset = "digits"
seeds = [0]
set = { epochs = 3 }

[[noise]]
type = "none"

[[losses]]
name = "ce"

[[losses]]
name = "ce"
label = "CE (absurd lr)"
set = { lr = 1e12, grad_clip = 0.0 }

[[losses]]
name = "gce"
""")
    out = run_cli("sweep", str(spec), "--results", "results", "--cpus-per-trial", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    trials = ResultsStore(tmp_path / "results", "diverge").trials().set_index("loss_display")
    assert set(trials.index) == {"CE", "CE (absurd lr)", "GCE"}
    assert trials.loc["CE (absurd lr)", "status"] == "failed"
    assert "Diverged" in trials.loc["CE (absurd lr)", "error"]
    assert trials.loc["CE", "status"] == "ok" and trials.loc["GCE", "status"] == "ok"
    assert trials.loc["CE", "final_test_acc"] > 0.8
    # The failed trial is not run again unless asked.
    again = run_cli("sweep", str(spec), "--results", "results", "--dry-run", cwd=tmp_path)
    assert "0 to run" in again.stdout.replace("\n", " ")
    retry = run_cli("sweep", str(spec), "--results", "results", "--dry-run", "--retry-failed", cwd=tmp_path)
    assert "1 to run" in retry.stdout.replace("\n", " ")


@pytest.mark.parametrize("body, needle", [
    ("dataset = 'digits'\n[[noise]]\ntype='none'\n", "missing 'losses'"),
    ("dataset = 'digits'\nlosses = [{name='ce'}]\nnoise = [{type='none'}]\ncolour = 1\n", "unknown key 'colour'"),
    ("dataset = 'digits'\nlosses = [{name='xent'}]\nnoise = [{type='none'}]\n", "unknown loss 'xent'"),
    ("dataset = 'digits'\nlosses = [{name='ce'}]\nnoise = [{type='asym', rates=[1.5]}]\n", "1.5"),
    ("dataset = 'digits'\nlosses = [{name='ce'}\n", "not valid TOML"),
])
def test_a_bad_spec_is_one_line_and_exit_2_before_ray(tmp_path: Path, body: str, needle: str) -> None:
    spec = write_spec(tmp_path / "bad.toml", body)
    out = run_cli("sweep", str(spec), "--results", "results", cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert needle in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "results").exists()


def test_unknown_sweep_name_and_gpus_without_gpu_exit_2(tmp_path: Path) -> None:
    out = run_cli("sweep", "cifar11-asym", cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and "no sweep named 'cifar11-asym'" in out.stderr
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = run_cli("sweep", "quickstart", "--gpus-per-trial", "0.25", "--results", "r", cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and "no CUDA GPU" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()


def test_every_shipped_spec_expands_to_valid_unique_trials() -> None:
    from drainage_bench.sweeps.spec import builtin_specs

    required = {"quickstart", "mnist-asym", "mnist-sym", "fashion-mnist-asym", "cifar10-asym", "cifar10-sym",
                "cifar10-instance", "cifar10-human", "cifar100-asym", "cifar100-instance", "cifar100-human"}
    assert required <= set(builtin_specs())
    for name in builtin_specs():
        spec = load_spec(name)
        configs = spec.expand()
        assert len(configs) == len(spec.losses) * len(spec.noise) * len(spec.seeds)
        assert len({c.trial_id for c in configs}) == len(configs), name
    quick = load_spec("quickstart").expand()
    assert {c.loss for c in quick} == {"ce", "gce", "sce", "nce_rce", "anl_ce", "drainage"}
    assert sorted({c.noise_tag for c in quick}) == ["asym0.2", "asym0.4", "clean"]


def test_spec_loss_entries_carry_labels_and_recipe_overrides() -> None:
    spec = parse_spec({
        "dataset": "mnist", "seeds": [3],
        "losses": [{"name": "ce"}, {"name": "ce", "label": "CE + L1", "set": {"l1_delta": 1e-3, "weight_decay": 0.0}},
                   {"name": "drainage", "params": {"alpha": 2.0}}],
        "noise": [{"type": "sym", "rates": [0.8]}],
    }, name="ablation")
    plain, l1, drain = spec.expand()
    assert (plain.l1_delta, plain.weight_decay) == (0.0, 1e-3)  # the MNIST recipe for CE
    assert (l1.l1_delta, l1.weight_decay, l1.label) == (1e-3, 0.0, "CE + L1")
    assert plain.trial_id != l1.trial_id
    assert drain.params["alpha"] == 2.0 and drain.seed == 3 and drain.noise_rate == 0.8
    with pytest.raises(UserError, match="tuned"):
        parse_spec({"dataset": "digits", "losses": [{"name": "drainage", "params": "tuned"}],
                    "noise": [{"type": "none"}]}, name="t").expand()


@pytest.mark.slow
def test_a_trial_whose_worker_dies_is_not_recorded_and_runs_again(tmp_path: Path) -> None:
    """A lost worker (as on a crashed node) is not the trial's fault: no record, rerun next time."""
    spec = write_spec(tmp_path / "lost.toml", TINY.format(epochs=60, concurrent=1).replace(
        "seeds = [0, 1, 2]", "seeds = [0, 1]").replace('[[losses]]\nname = "drainage"\n', ""))
    driver = subprocess.Popen([*CLI, "sweep", str(spec), "--results", "results"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = None
    deadline = time.monotonic() + 120
    while worker is None and time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout.split()
        worker = int(found[0]) if found else None
        time.sleep(0.5)
    assert worker is not None, "no Tune worker appeared"
    time.sleep(5)  # inside the first trial's epochs
    os.kill(worker, signal.SIGKILL)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output
    store = ResultsStore(tmp_path / "results", "lost")
    assert len(store.trial_ids()) == 1 and "lost" in output and "1 missing" in output
    again = run_cli("sweep", str(spec), "--results", "results", cwd=tmp_path)
    assert again.returncode == 0 and "1 to run" in again.stdout.replace("\n", " ")
    assert store.trial_ids() == expected_ids(spec) and (store.trials()["status"] == "ok").all()

"""Sweeps on a real Ray: resume after SIGKILL, failures recorded, bad input refused before Ray starts."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from drainage_bench.analysis.store import ResultsStore
from drainage_bench.sweeps.spec import load_spec, parse_spec
from drainage_bench.sweeps.tune_runner import Resources, check_resources, for_worker
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


def process_tree(root: int) -> dict[int, str]:
    """pid -> command line of every process below `root` (a driver's Ray: gcs, raylet, workers)."""
    rows = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout.splitlines()
    children: dict[int, list[tuple[int, str]]] = {}
    for row in rows:
        pid, ppid, *args = row.split(None, 2)
        children.setdefault(int(ppid), []).append((int(pid), args[0] if args else ""))
    found, stack = {}, [root]
    while stack:
        for pid, args in children.get(stack.pop(), []):
            found[pid] = args
            stack.append(pid)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaps counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_until_gone(pids, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, "the killed driver's Ray processes did not go away"
        time.sleep(0.2)


def expected_ids(spec_path: Path) -> set[str]:
    return {c.trial_id for c in load_spec(str(spec_path)).expand()}


@pytest.mark.slow
def test_sigkill_of_the_driver_then_resume_runs_only_the_missing_trials(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "tiny.toml", TINY.format(epochs=25, concurrent=1))
    store = ResultsStore(tmp_path / "results", "tiny")
    driver = subprocess.Popen([*CLI, "sweep", str(spec), "--results", "results"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(store.trial_ids()) < 2 and time.monotonic() < deadline:
        assert driver.poll() is None, "the sweep ended before the kill"
        time.sleep(0.2)
    ray_processes = process_tree(driver.pid)
    before = store.trials()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 2 <= len(before) < 6, "the kill must land in the middle of the sweep"
    wait_until_gone(ray_processes)  # Ray's processes share the driver's fate; no trial still running

    done = run_cli("sweep", str(spec), "--results", "results", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    after = store.trials()
    assert set(after["trial_id"]) == expected_ids(spec)
    assert len(after) == len(expected_ids(spec)) == 6
    assert (after["status"] == "ok").all()
    # The sweep left its epochs index current (only `plot` reads epochs): the first plot reads one file.
    indexed = pq.read_table(store.path / "index" / "epochs.parquet", columns=["_file"]).column("_file")
    assert set(indexed.to_pylist()) == {f"{t}.parquet" for t in expected_ids(spec)}
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
    ("dataset = 'digits'\nlosses = [{name='ce'}]\nnoise = [{type='human', keys=5}]\n", 'noise "human" needs keys'),
    ("dataset = 'digits'\nlosses = [{name='ce', label=5}]\nnoise = [{type='none'}]\nset = {epochs=1}\n",
     "losses.ce.label must be a string"),
    ("dataset = 'digits'\nlosses = [{name='ce'}]\nnoise = [{type='none'}]\nresources = {cpus_per_trial='abc'}\n",
     "[resources] cpus_per_trial must be a number, got 'abc'"),
    ("dataset = 'digits'\nlosses = [{name='ce'}]\nnoise = [{type='none'}]\nresources = {max_concurrent=1.5}\n",
     "[resources] max_concurrent must be an integer"),
    # What would be dropped or counted once without a word:
    ("dataset = 'digits'\nlosses = [{name='ce'}]\nnoise = [{type='none', rates=[0.2]}]\n",
     "noise 'none' takes no 'rates'"),
    ("dataset = 'digits'\nlosses = [{name='ce'}]\nnoise = [{type='sym', rates=[0.2], keys=['a']}]\n",
     "noise 'sym' takes no 'keys' (it takes rates)"),
    ("dataset = 'digits'\nseeds = [0, 1, 0]\nlosses = [{name='ce'}]\nnoise = [{type='none'}]\n",
     "'seeds' lists a seed twice: [0, 1, 0]"),
    ("dataset = 'digits'\nlosses = [{name='ce'}, {name='gce'}, {name='ce'}]\nnoise = [{type='none'}]\n",
     "comes twice from the grid (loss ce, noise clean, seed 0)"),
    ("dataset = 'digits'\nlosses = [{name='ce'}]\nnoise = [{type='asym', rates=[0.2, 0.2]}]\n",
     "comes twice from the grid (loss ce, noise asym0.2, seed 0)"),
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


def test_gpu_share_and_device_are_checked_before_ray(tmp_path: Path) -> None:
    out = run_cli("sweep", "quickstart", "--gpus-per-trial", "2", "--address", "auto", "--results", "r",
                  cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and "between 0 and 1" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("sweep", "quickstart", "--set", "device=cuda", "--results", "r", cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and "device=cuda needs a GPU share" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "r").exists()
    # $RAY_ADDRESS stands for --address: a cluster's GPUs are not this machine's.
    env = {**os.environ, "RAY_ADDRESS": "auto"}
    out = subprocess.run([*CLI, "sweep", "quickstart", "--gpus-per-trial", "0.25", "--dry-run", "--results", "r"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "0.25 GPU per trial" in out.stdout, out.stderr


@pytest.mark.slow
def test_a_cpu_share_larger_than_the_machine_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # Tune would keep such a trial pending forever, printing nothing (the sweep hung).
    spec = write_spec(tmp_path / "tiny.toml", TINY.format(epochs=1, concurrent=1))
    line = re.compile(r"--cpus-per-trial=4096 is more than this machine has \((\d+) CPUs for Ray\): no trial could "
                      r"start; give --cpus-per-trial \1 or less \(a spec sets it in \[resources\]\)$")
    out = run_cli("sweep", str(spec), "--results", "r", "--cpus-per-trial", "4096", cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert line.search(out.stderr.strip().splitlines()[-1]), out.stderr
    assert not list((tmp_path / "r").rglob("*.parquet"))  # not even the trial list
    out = run_cli("tune", "digits", "--loss", "gce", "--noise", "sym:0.2", "--trials", "1", "--storage",
                  str(tmp_path / "s.log"), "--results", "r", "--cpus-per-trial", "4096", cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert line.search(out.stderr.strip().splitlines()[-1]), out.stderr
    assert not (tmp_path / "s.log").exists() and not list((tmp_path / "r").rglob("*"))  # no study, nothing else


def test_a_worker_gets_cuda_only_with_a_gpu_share_unless_a_device_is_named() -> None:
    config = load_spec("quickstart").expand()[0]
    assert config.device == "auto"
    quarter, none = Resources(1, 0.25), Resources(1, 0)
    assert for_worker(config, quarter)["device"] == "cuda"
    assert for_worker(config, none)["device"] == "cpu"
    assert for_worker(config.replace(device="cpu"), quarter)["device"] == "cpu"
    assert Path(for_worker(config, none)["data_root"]).is_absolute()
    cuda = config.replace(device="cuda")
    assert check_resources(quarter, "auto", True, [cuda]) == quarter  # fine: it holds a GPU share
    with pytest.raises(UserError, match="needs a GPU share"):
        check_resources(none, None, False, [config, cuda])


def _max_overlap(starts: pd.Series, ends: pd.Series) -> int:
    """The most intervals [start, end] open at one instant."""
    events = sorted([(t, 1) for t in pd.to_datetime(starts)] + [(t, -1) for t in pd.to_datetime(ends)],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    open_now = most = 0
    for _, step in events:
        open_now += step
        most = max(most, open_now)
    return most


def test_max_overlap_by_hand() -> None:
    s = pd.Series(["2026-01-01T00:00:00", "2026-01-01T00:00:01", "2026-01-01T00:00:05"])
    e = pd.Series(["2026-01-01T00:00:02", "2026-01-01T00:00:05", "2026-01-01T00:00:06"])
    assert _max_overlap(s, e) == 2  # [0,2] and [1,5]; [5,6] starts as [1,5] ends


@pytest.mark.slow
def test_a_quarter_gpu_per_trial_packs_four_trials_on_one_gpu(tmp_path: Path) -> None:
    """Ray's GPUs are logical resources: a head that declares one GPU on this CPU-only machine
    schedules like a one-GPU node. Eight trials at 0.25 GPU, with 8 CPUs free, run four at a time,
    never more: in a sweep, and in an Optuna search. (device=cpu keeps the training on the CPU: the share then only limits concurrency;
    on a real GPU the four trials would share it. The GPU itself is not exercised here.)"""
    import secrets
    import shutil
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))  # this cluster alone
    ray = str(Path(sys.executable).parent / "ray")
    temp = tempfile.mkdtemp(prefix="db-ray-", dir="/tmp")  # short: Ray's socket paths have a limit
    head = subprocess.Popen([ray, "start", "--head", "--block", "--num-cpus", "8", "--num-gpus", "1",
                             "--port", str(port), "--temp-dir", temp, "--include-dashboard", "false",
                             "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while subprocess.run([ray, "status", "--address", address], env=env, capture_output=True).returncode:
            assert time.monotonic() < deadline and head.poll() is None, "the Ray head did not come up"
            time.sleep(1)
        spec = write_spec(tmp_path / "pack.toml", TINY.format(epochs=15, concurrent=8).replace(
            "seeds = [0, 1, 2]", "seeds = [0, 1, 2, 3]").replace("epochs = 15", 'epochs = 15, device = "cpu"'))
        out = subprocess.run([*CLI, "sweep", str(spec), "--results", "results", "--address", address,
                              "--gpus-per-trial", "0.25"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=400)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "0.25 GPU per trial" in out.stdout
        # The Optuna search asks only as many trials as fit (its own count, not Ray's queue).
        tuned = subprocess.run([*CLI, "tune", "digits", "--loss", "gce", "--noise", "asym:0.2", "--trials", "8",
                                "--pruner", "none", "--set", "epochs=2", "--set", "device=cpu", "--results",
                                "results", "--address", address, "--gpus-per-trial", "0.25"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert tuned.returncode == 0, tuned.stdout + tuned.stderr
    finally:
        head.terminate()  # `ray start --block` stops the processes of its cluster on SIGTERM
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
    trials = ResultsStore(tmp_path / "results", "pack").trials()
    assert set(trials["trial_id"]) == expected_ids(spec) and len(trials) == 8
    assert (trials["status"] == "ok").all() and (trials["device_used"] == "cpu").all()
    assert (trials["gpus_per_trial"] == 0.25).all() and (trials["cpus_per_trial"] == 1).all()
    # Never more than four; three or four at once shows the packing (workers start at their own pace).
    assert 3 <= _max_overlap(trials["started_at"], trials["finished_at"]) <= 4
    import optuna

    storage = f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 8
    assert _max_overlap(pd.Series([t.datetime_start for t in complete]),
                        pd.Series([t.datetime_complete for t in complete])) == 4


def test_a_setting_the_grid_does_not_choose_is_applied() -> None:
    # Without an `openset` list the grid has no split: a spec's set (or --set) chooses it, as before.
    raw = {"dataset": "mnist", "losses": [{"name": "ce"}, {"name": "drainage"}],
           "noise": [{"type": "none"}], "set": {"openset": "standard:0"}}
    configs = parse_spec(raw, "x").expand()
    assert [c.openset for c in configs] == ["standard:0", "standard:0"]
    assert [c.openset for c in parse_spec({**raw, "set": {}}, "x").expand({"openset": "standard:1"})] == \
        ["standard:1", "standard:1"]
    with pytest.raises(UserError, match="the openset comes from the spec's openset"):
        parse_spec({**raw, "openset": ["standard:0", "standard:1"]}, "x").expand()
    with pytest.raises(UserError, match=r"'openset' lists a split twice: \['standard:0', 'standard:0'\]"):
        parse_spec({**raw, "set": {}, "openset": ["standard:0", "standard:0"]}, "x")


def test_every_shipped_spec_expands_to_valid_unique_trials() -> None:
    from drainage_bench.sweeps.spec import builtin_specs

    # Counted by hand from the TOML files: the large specs have 12 loss rows (11 losses and the
    # "CE + L1" row) x 3 seeds = 36 trials per noise setting.
    counts = {"quickstart": 6 * 3 * 2, "mnist-asym": 36 * 4, "mnist-sym": 36 * 5, "fashion-mnist-asym": 36 * 4,
              "cifar10-asym": 36 * 5, "cifar10-sym": 36 * 5, "cifar10-instance": 36 * 2, "cifar10-human": 36 * 5,
              "cifar100-asym": 36 * 4, "cifar100-instance": 36 * 2, "cifar100-human": 36 * 1,
              # open-set: 4 loss rows (CE, drainage learned, z_d = 0, z_d = 2) x splits x seeds
              "mnist-openset": 4 * 5 * 2, "cifar10-openset": 4 * 5 * 3, "svhn-openset": 4 * 5 * 3,
              "mnist-vs-fashion": 4 * 1 * 3,
              # 6 loss rows (CE, CE + mollify, LS, drainage, drainage + mollify, drainage-sink)
              # x 2 noise settings (clean, sym 0.4) x 3 seeds
              "mnist-mollify": 6 * 2 * 3, "cifar10-mollify": 6 * 2 * 3, "cifar100-mollify": 6 * 2 * 3}
    assert set(counts) <= set(builtin_specs())
    for name in builtin_specs():
        configs = load_spec(name).expand()
        assert len({c.trial_id for c in configs}) == len(configs), name
        if name in counts:
            assert len(configs) == counts[name], name
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
    while worker is None and time.monotonic() < deadline:  # this driver's Tune worker, no other
        found = [pid for pid, args in process_tree(driver.pid).items() if args.startswith("ray::ImplicitFunc")]
        worker = found[0] if found else None
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

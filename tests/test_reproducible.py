"""Reproducible records: run conditions in every record, one thread policy for train / sweep /
tune, `reproduce`, the deterministic switch."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from drainage_bench.analysis.store import ResultsStore
from drainage_bench.config import build_config
from drainage_bench.trainer.provenance import threads_for, use_cpu_share

CLI = [sys.executable, "-m", "drainage_bench.cli"]
# Columns that describe when/where/how long, not what came out.
NOT_RESULTS = {"started_at", "finished_at", "wall_seconds", "host", "sweep", "data_root", "device",
               "gpus_per_trial", "train_seconds", "epoch_seconds"}

SPEC = """
dataset = "digits"
seeds = [1]
set = { epochs = 2 }

[resources]
cpus_per_trial = 1

[[noise]]
type = "none"

[[losses]]
name = "nce_rce"
"""


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def only_row(folder: Path) -> pd.Series:
    files = list(folder.glob("*.parquet"))
    assert len(files) == 1, files
    return pd.read_parquet(files[0]).iloc[0]


def assert_same_results(a: pd.Series, b: pd.Series) -> None:
    """Every column both records share, apart from timings and places, is equal (NaN == NaN)."""
    shared = sorted((set(a.index) & set(b.index)) - NOT_RESULTS)
    assert {"final_test_acc", "final_train_loss", "torch_threads", "trial_id"} <= set(shared)
    differ = [k for k in shared if not (a[k] == b[k] or (pd.isna(a[k]) and pd.isna(b[k])))]
    assert not differ, {k: (a[k], b[k]) for k in differ}


def test_thread_policy_is_the_whole_cpus_of_the_share() -> None:
    before = torch.get_num_threads()
    try:
        assert [threads_for(c) for c in (0.25, 1, 1.5, 2, 3.99)] == [1, 1, 1, 2, 3]
        assert use_cpu_share(1.5) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_conditions_name_the_libraries_whose_algorithms_the_numbers_follow() -> None:
    """scikit-learn makes the digits split and every 80/20 split, scipy the instance-noise flip
    rates, torchvision the JPEG corruption: their versions are run conditions like numpy's."""
    from importlib import metadata

    import numpy as np

    from drainage_bench.trainer.provenance import provenance

    conditions = provenance("cpu")
    assert conditions["numpy_version"] == np.__version__
    assert conditions["scipy_version"] == metadata.version("scipy")
    assert conditions["sklearn_version"] == metadata.version("scikit-learn")
    assert conditions["torchvision_version"] == metadata.version("torchvision")


@pytest.mark.slow
def test_train_sweep_and_tune_with_one_cpu_share_give_identical_records(data_root: Path, tmp_path: Path) -> None:
    """The same trial through `train`, through `sweep` (real Ray) and `tune --in-process` (its
    recipe trial on the 80/20 split), all with 1 CPU, gives the same numbers; `reproduce` of the
    sweep's record prints identical values, leaves the record untouched, and exits 1 on a record
    whose value is not what the trial gives."""
    env_dir = tmp_path
    trained = run_cli("train", "--loss", "nce_rce", "--seed", "1", "--epochs", "2", "--results", "res",
                      "--cpus-per-trial", "1", cwd=env_dir)
    assert trained.returncode == 0, trained.stderr
    spec = tmp_path / "one.toml"
    spec.write_text(SPEC)
    swept = run_cli("sweep", str(spec), "--results", "res", cwd=env_dir)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    train_row = only_row(tmp_path / "res" / "train" / "trials")
    sweep_row = only_row(tmp_path / "res" / "one" / "trials")
    assert train_row["trial_id"] == sweep_row["trial_id"] == build_config(
        "digits", "nce_rce", {"seed": 1, "epochs": 2}).trial_id
    assert train_row["torch_threads"] == sweep_row["torch_threads"] == 1
    assert train_row["cpus_per_trial"] == sweep_row["cpus_per_trial"] == 1.0
    assert_same_results(train_row, sweep_row)
    train_epochs = only_row_frame(tmp_path / "res" / "train" / "epochs")
    sweep_epochs = only_row_frame(tmp_path / "res" / "one" / "epochs")
    cols = [c for c in train_epochs if c not in NOT_RESULTS]
    pd.testing.assert_frame_equal(train_epochs[cols], sweep_epochs[cols])

    # tune: its first trial holds the recipe's values; `train` of that trial on the 80/20 split
    tuned = run_cli("tune", "digits", "--loss", "nce_rce", "--noise", "none", "--trials", "1", "--in-process",
                    "--pruner", "none", "--set", "epochs=2", "--results", "res", cwd=env_dir)
    assert tuned.returncode == 0, tuned.stdout + tuned.stderr
    split = run_cli("train", "--loss", "nce_rce", "--seed", "0", "--epochs", "2", "--set", "val_fraction=0.2",
                    "--results", "res", "--name", "split", cwd=env_dir)
    assert split.returncode == 0, split.stderr
    split_row = only_row(tmp_path / "res" / "split" / "trials")
    (study_name,) = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'res' / 'optuna.db'}")
    (first,) = optuna.load_study(study_name=study_name, storage=f"sqlite:///{tmp_path / 'res' / 'optuna.db'}").trials
    assert first.user_attrs["recipe_defaults"] is True
    assert first.user_attrs["trial_id"] == split_row["trial_id"]
    assert first.value == split_row["final_val_acc"] and first.user_attrs["best_val_acc"] == split_row["best_val_acc"]

    record_file = next((tmp_path / "res" / "one" / "trials").glob("*.parquet"))
    before = record_file.read_bytes(), record_file.stat().st_mtime_ns
    again = run_cli("reproduce", "one", sweep_row["trial_id"], "--results", "res", cwd=env_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = {line.split()[0]: line.split() for line in again.stdout.splitlines() if line.strip()}
    assert lines["final_test_acc"][1] == lines["final_test_acc"][2] == repr(float(sweep_row["final_test_acc"]))
    assert lines["final_test_acc"][3] == "yes" and "with 1 torch thread(s)" in again.stdout
    assert (record_file.read_bytes(), record_file.stat().st_mtime_ns) == before

    # a record whose test accuracy is one test image off: reported, exit 1
    tampered = ResultsStore(tmp_path / "res", "tampered")
    row = sweep_row.to_dict()
    row["final_test_acc"] = sweep_row["final_test_acc"] + 1 / 540
    tampered.write_trial(row, sweep_epochs.drop(columns="trial_id").to_dict("records"))
    off = run_cli("reproduce", "tampered", sweep_row["trial_id"], "--results", "res", cwd=env_dir)
    assert off.returncode == 1, off.stdout + off.stderr
    rows = {line.split()[0]: line.split() for line in off.stdout.splitlines() if line.strip()}
    assert rows["final_test_acc"][3] == "NO" and rows["final_train_loss"][3] == "yes"


def only_row_frame(folder: Path) -> pd.DataFrame:
    files = list(folder.glob("*.parquet"))
    assert len(files) == 1, files
    return pd.read_parquet(files[0])


@pytest.mark.parametrize("args, message", [
    (["nosuch", "ce-clean-s0-0000000000"], "no sweep 'nosuch'"),
    (["hand", "ce-clean-s9-0000000000"], "no trial 'ce-clean-s9-0000000000'"),
])
def test_reproduce_refuses_an_unknown_sweep_or_trial_in_one_line(tmp_path: Path, args, message) -> None:
    from results_helpers import HAND_ROWS, write_rows

    write_rows(tmp_path / "res", HAND_ROWS[:1])
    out = run_cli("reproduce", *args, "--results", "res", cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_deterministic_switch_is_recorded_and_sets_cublas_workspace(data_root: Path, monkeypatch) -> None:
    """On the CPU the numbers are the same either way; the record says which way it ran, the
    cuBLAS variable is set for the process, and the next trial without the switch turns it off."""
    from drainage_bench.trainer.loop import run_trial

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    fast = build_config("digits", "ce", {"epochs": 1, "seed": 3})
    exact = fast.replace(deterministic=True)
    assert exact.trial_id == fast.trial_id  # a run condition, not a different experiment
    try:
        det = run_trial(exact).record()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert det["deterministic"] is True and det["deterministic_algorithms"] is True
        assert det["cublas_workspace_config"] == ":4096:8"
        plain = run_trial(fast).record()
        assert plain["deterministic"] is False and plain["deterministic_algorithms"] is False
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert det["final_test_acc"] == plain["final_test_acc"] and det["final_train_loss"] == plain["final_train_loss"]
    assert not math.isnan(det["final_test_acc"])


def test_deterministic_must_be_a_boolean() -> None:
    from drainage_bench.errors import UserError

    with pytest.raises(UserError, match="deterministic='yes' is invalid"):
        build_config("digits", "ce", {"deterministic": "yes"})


@pytest.mark.slow
def test_reproduce_compares_the_labels_and_the_per_sample_records(data_root: Path, tmp_path: Path) -> None:
    """A drainage trial with corrupted test sets reproduces: its labels (noise_hash), its drainage
    probabilities and its corruption cells are compared too. A record whose noise_hash names other
    labels, or whose stored per-sample rows are not the trial's, differs although every metric and
    every epoch is as recorded."""
    from drainage_bench.reproduce import reproduce
    from drainage_bench.trainer.loop import run_trial

    config = build_config("digits", "drainage", {"epochs": 1, "seed": 2, "noise": "sym", "noise_rate": 0.3,
                                                 "corruptions": "synthetic", "corruption_images": 32})
    before = torch.get_num_threads()
    try:
        use_cpu_share(1)
        result = run_trial(config)
    finally:
        torch.set_num_threads(before)
    assert result.status == "ok" and result.samples and result.corruptions
    record = {**result.record(), "cpus_per_trial": 1.0}
    samples = {k: v.copy() for k, v in result.samples.items()}
    samples["drainage_prob"][0] += 1e-6
    cells = [dict(row) for row in result.corruptions]
    cells[3]["nll"] += 1e-9
    for sweep, row, sample_rows, cell_rows in [
            ("as-run", record, result.samples, result.corruptions),
            ("other-labels", {**record, "noise_hash": "0" * 64}, result.samples, result.corruptions),
            ("other-samples", record, samples, result.corruptions),
            ("other-cells", record, result.samples, cells),
            ("older-torch", {**record, "torch_version": "1.0.0", "sklearn_version": None,
                             "compile_status": "eager: [/tmp/x.cpp:3] no C compiler"}, result.samples,
             result.corruptions)]:
        ResultsStore(tmp_path, sweep).write_trial(row, result.epochs, sample_rows, result.noise, corruptions=cell_rows)

    ran = reproduce(tmp_path, "as-run", config.trial_id)
    assert ran.identical and not ran.epochs_differing
    assert ("noise_hash", record["noise_hash"], record["noise_hash"], True) in ran.rows
    assert ran.parts == [("samples", True), ("corruptions", True)]
    assert ran.conditions == []
    # Recorded under another torch (and before sklearn_version was recorded): reported, not a difference.
    older = reproduce(tmp_path, "older-torch", config.trial_id)
    assert older.identical and older.conditions == [("torch_version", "1.0.0", torch.__version__),
                                                    ("compile_status", "eager: [/tmp/x.cpp:3] no C compiler", "off")]
    labels = reproduce(tmp_path, "other-labels", config.trial_id)
    assert not labels.identical and [m for m, *_, same in labels.rows if not same] == ["noise_hash"]
    assert labels.parts == [("samples", True), ("corruptions", True)]
    for sweep, part in (("other-samples", "samples"), ("other-cells", "corruptions")):
        off = reproduce(tmp_path, sweep, config.trial_id)
        assert not off.identical and all(same for *_, same in off.rows) and not off.epochs_differing
        assert dict(off.parts) == {"samples": part != "samples", "corruptions": part != "corruptions"}


@pytest.mark.slow
def test_reproduce_runs_under_the_recorded_precision(data_root: Path, tmp_path: Path) -> None:
    """amp=true on a CPU without bf16 instructions trains in fp32 and records precision fp32; on a
    CPU with them, reproduce runs that record in fp32 too (the config alone would give bf16), and
    compares precision like a metric (compile_status is a reported condition)."""
    from drainage_bench.reproduce import reproduce
    from drainage_bench.trainer.loop import Precision, cpu_has_bf16, run_trial

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 instructions: amp=true runs in fp32 here either way")
    config = build_config("digits", "ce", {"epochs": 1, "seed": 1, "amp": True, "noise": "sym", "noise_rate": 0.2})
    before = torch.get_num_threads()
    try:
        use_cpu_share(1)
        bf16 = run_trial(config)
        fp32 = run_trial(config, precision=Precision(autocast=False, channels_last=False))  # as without bf16
    finally:
        torch.set_num_threads(before)
    assert (bf16.extra["precision"], fp32.extra["precision"]) == ("bf16", "fp32")
    assert bf16.summary["final_train_loss"] != fp32.summary["final_train_loss"]  # two computations
    for sweep, result in (("without-bf16", fp32), ("with-bf16", bf16)):
        ResultsStore(tmp_path, sweep).write_trial({**result.record(), "cpus_per_trial": 1.0}, result.epochs,
                                                  result.samples, result.noise)
        cmp = reproduce(tmp_path, sweep, config.trial_id)
        rows = {metric: (old, new, same) for metric, old, new, same in cmp.rows}
        assert cmp.identical, [row for row in cmp.rows if not row[3]]
        assert rows["precision"] == (result.extra["precision"],) * 2 + (True,)
        assert "compile_status" not in rows and cmp.conditions == []

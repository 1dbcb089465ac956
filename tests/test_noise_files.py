"""Noise as data: the labels each trial trained on are stored once per content hash and named by
its record; label files (--noise file:PATH, spec type = "file") are validated, hashed into the
trial's identity and trained on exactly; a bad file is one line, exit 2, nothing written."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from drainage_bench import noise_files
from drainage_bench.analysis.store import ResultsStore
from drainage_bench.config import TrialConfig, build_config
from drainage_bench.errors import UserError
from drainage_bench.trainer.noise import noise_fields

CLI = [sys.executable, "-m", "drainage_bench.cli"]
DIGITS_TRAIN = 1257  # scikit-learn digits, the fixed stratified train part (README)


def sha(labels, dataset="digits") -> str:
    """The content hash, written out independently of noise_files."""
    labels = np.asarray(labels)
    return hashlib.sha256(f"{dataset}:{labels.size}:".encode() + labels.astype("<i8").tobytes()).hexdigest()


def digits_clean() -> np.ndarray:
    from drainage_bench.trainer.data import load_dataset, resolve_data_root

    return load_dataset("digits", resolve_data_root(None)).train_labels.numpy()


def some_labels(seed: int = 0) -> np.ndarray:
    """The clean digits labels with every 5th one moved to the next class."""
    labels = digits_clean().copy()
    labels[seed::5] = (labels[seed::5] + 1) % 10
    return labels


def cli(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Label files


def test_label_files_in_every_form_read_the_same(tmp_path):
    labels = np.array([3, 0, 9, 1, 1])
    np.savez(tmp_path / "named.npz", labels=labels, other=np.zeros(2))
    np.savez(tmp_path / "single.npz", y=labels.astype(np.int32))
    (tmp_path / "plain.csv").write_text("3\n0\n9\n1\n1\n")
    (tmp_path / "column.csv").write_text("index,label\n0,3\n1,0\n2,9\n3,1\n4,1\n")
    for name in ("named.npz", "single.npz", "plain.csv", "column.csv"):
        read = noise_files.read_label_file(tmp_path / name)
        assert read.dtype == np.int64 and read.tolist() == [3, 0, 9, 1, 1], name
    assert noise_files.labels_hash(labels, "digits") == sha(labels)


@pytest.mark.parametrize("name, body, problem", [
    ("floats.csv", "1\n2.5\n", "row 2: '2.5' is not an integer label"),
    ("header.csv", "y,z\n1,2\n", "neither an integer label nor a header with a 'label' column"),
    ("empty.csv", "\n", "is empty"),
    ("labels.txt", "1\n", "unknown suffix"),
])
def test_malformed_csv_files_are_refused_naming_the_file(tmp_path, name, body, problem):
    (tmp_path / name).write_text(body)
    with pytest.raises(UserError, match=problem) as err:
        noise_files.read_label_file(tmp_path / name)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_bad_npz_files_are_refused(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros(3, int), b=np.ones(3, int))
    np.savez(tmp_path / "float.npz", labels=np.zeros(3))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for name, problem in (("two.npz", "no 'labels' array"), ("float.npz", "must be integers"),
                          ("junk.npz", "cannot read"), ("missing.npz", "does not exist")):
        with pytest.raises(UserError, match=problem):
            noise_files.read_label_file(tmp_path / name)


def test_length_and_class_range_are_checked(tmp_path):
    np.savez(tmp_path / "range.npz", labels=np.full(DIGITS_TRAIN, 10))
    with pytest.raises(UserError, match=r"outside 0\.\.9 \(e\.g\. 10"):
        build_config("digits", "ce", noise_fields(f"file:{tmp_path / 'range.npz'}"))
    short = tmp_path / "short.csv"
    short.write_text("1\n2\n3\n")
    config = build_config("digits", "ce", {**noise_fields(f"file:{short}"), "epochs": 1})
    from drainage_bench.trainer.noise import check_label_files

    with pytest.raises(UserError, match=f"has 3 labels but the training set has {DIGITS_TRAIN}"):
        check_label_files([config])


def test_the_files_content_not_its_path_is_the_trials_identity(tmp_path):
    labels = some_labels()
    np.savez(tmp_path / "a.npz", labels=labels)
    (tmp_path / "b.csv").write_text("\n".join(map(str, labels)) + "\n")
    a = build_config("digits", "ce", noise_fields(f"file:{tmp_path / 'a.npz'}"))
    b = build_config("digits", "ce", noise_fields(f"file:{tmp_path / 'b.csv'}"))
    assert a.noise_key == sha(labels)[:12] and a.trial_id == b.trial_id
    assert a.trial_id.startswith(f"ce-file-{sha(labels)[:12]}-s0-")
    assert "noise_file" not in a.canonical() and a.noise_file == str(tmp_path / "a.npz")
    other = some_labels(seed=1)
    np.savez(tmp_path / "c.npz", labels=other)
    assert build_config("digits", "ce", noise_fields(f"file:{tmp_path / 'c.npz'}")).trial_id != a.trial_id
    # the file changes after the trial was planned: a worker rebuilding the config refuses it
    np.savez(tmp_path / "a.npz", labels=other)
    with pytest.raises(UserError, match="has changed"):
        TrialConfig.from_dict(a.to_dict())


# ---------------------------------------------------------------------------------------------
# Noise records in the store


def test_concurrent_writers_leave_one_complete_noise_record(tmp_path):
    record = noise_files.noise_record(some_labels(), digits_clean(), np.eye(10), 0.2, 0.2, "digits", "sym")
    barrier = threading.Barrier(6)

    def write():
        barrier.wait()
        noise_files.write_noise_record(tmp_path, record)

    threads = [threading.Thread(target=write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.name for p in tmp_path.iterdir()] == [f"{sha(some_labels())}.npz"]  # no temporary file left
    back = noise_files.read_noise_record(tmp_path / f"{sha(some_labels())}.npz")
    assert np.array_equal(back["noisy_labels"], some_labels()) and back["nominal_rate"] == 0.2


@pytest.mark.slow
def test_trials_with_the_same_noise_and_seed_name_the_same_stored_labels(tmp_path):
    from drainage_bench.trainer.loop import prepare, run_trial

    import torch

    store = ResultsStore(tmp_path, "pair")
    configs = [build_config("digits", loss, {"noise": "sym", "noise_rate": 0.2, "seed": 3, "epochs": 1})
               for loss in ("ce", "gce")]
    for config in configs:
        result = run_trial(config)
        store.write_trial(result.record(), result.epochs, result.samples, result.noise)
    records = store.trials()
    assert records["noise_hash"].nunique() == 1
    digest = records["noise_hash"].iloc[0]
    stored = store.noise(digest)
    used = prepare(configs[1], torch.device("cpu")).train_labels.numpy()  # what the trainer trains on
    assert np.array_equal(stored["noisy_labels"], used) and digest == sha(used)
    clean = digits_clean()
    assert np.array_equal(stored["clean_labels"], clean)
    # sym 0.2: floor(0.2 n_c) flips per class; the stored rate and transition are those of the labels
    assert stored["realized_rate"] == pytest.approx(np.mean(used != clean))
    assert stored["realized_rate"] == pytest.approx(records["realized_noise_rate"].iloc[0])
    for c in (0, 7):
        members = clean == c
        assert stored["transition"][c, c] == pytest.approx(np.mean(used[members] == c))
    assert stored["nominal_rate"] == 0.2 and len(list((tmp_path / "pair" / "noise").iterdir())) == 1
    other = run_trial(configs[0].replace(seed=4))
    assert other.noise["hash"] != digest


# ---------------------------------------------------------------------------------------------
# Through the CLI


SPEC = """
dataset = "digits"
seeds = [0]
set = {{ epochs = 1 }}

[resources]
cpus_per_trial = 1
max_concurrent = 2

[[noise]]
type = "file"
path = "{path}"

[[losses]]
name = "ce"

[[losses]]
name = "gce"
"""


@pytest.mark.slow
def test_a_sweep_trains_on_exactly_the_labels_of_the_file(tmp_path):
    labels = some_labels()
    (tmp_path / "mine.csv").write_text("label\n" + "\n".join(map(str, labels)) + "\n")
    spec = tmp_path / "filesweep.toml"
    spec.write_text(SPEC.format(path="mine.csv"))  # relative to the spec's folder
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = cli("sweep", str(spec), "--results", "results", cwd=work)
    assert out.returncode == 0, out.stdout + out.stderr
    store = ResultsStore(work / "results", "filesweep")
    records = store.trials()
    assert sorted(records["loss"]) == ["ce", "gce"] and set(records["status"]) == {"ok"}
    assert set(records["noise_hash"]) == {sha(labels)} and set(records["noise_key"]) == {sha(labels)[:12]}
    stored = store.noise(sha(labels))
    assert np.array_equal(stored["noisy_labels"], labels)
    assert stored["realized_rate"] == pytest.approx(np.mean(labels != digits_clean()))  # 252 of 1257 moved
    # the same file by --noise on the command line is the same experiment: nothing left to run
    again = cli("sweep", str(spec), "--results", "results", "--noise", f"file:{tmp_path / 'mine.csv'}", "--dry-run",
                cwd=work)
    assert again.returncode == 0 and "0 to run" in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_a_bad_label_file_is_one_line_exit_2_and_nothing_written(tmp_path):
    (tmp_path / "short.csv").write_text("1\n2\n3\n")
    spec = tmp_path / "bad.toml"
    spec.write_text(SPEC.format(path="short.csv"))
    out = cli("sweep", str(spec), "--results", "results", cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert f"has 3 labels but the training set has {DIGITS_TRAIN}" in out.stderr and "short.csv" in out.stderr
    (tmp_path / "floats.csv").write_text("0\n1.5\n")
    out = cli("train", "--noise", f"file:{tmp_path / 'floats.csv'}", "--results", "results", "--epochs", "1",
              cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "floats.csv, row 2: '1.5' is not an integer label" in out.stderr
    assert not (tmp_path / "results").exists()

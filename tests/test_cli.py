"""The listing commands read the registries; `--help` of every command works."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import assert_user_error, tree

CLI = [sys.executable, "-m", "drainage_bench.cli"]


def run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_losses_lists_every_registered_loss_with_its_defaults() -> None:
    from test_losses import EXPECTED_DEFAULTS

    out = run("losses")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name, defaults in EXPECTED_DEFAULTS.items():  # the values of the papers, written by hand
        row = next((line for line in lines if line.split() and line.split()[0] == name), None)
        assert row is not None, name
        shown = row.split(None, 2)[2]
        expected = ", ".join(f"{k}={'1/alpha' if v is None else v}" for k, v in defaults.items()) or "—"
        assert shown.startswith(expected + " "), (name, shown)


def test_datasets_reports_what_is_found_under_the_data_root(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "DRAINAGE_BENCH_DATA": str(tmp_path)}
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    out = run("datasets", env=env)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.split()}
    assert " yes " in rows["digits"]          # embedded in scikit-learn
    assert " no " in rows["mnist"] and "train-images" in rows["mnist"]
    assert " no " in rows["cifar10"]


def test_sweeps_lists_the_shipped_specs_with_trial_counts() -> None:
    out = run("sweeps")
    assert out.returncode == 0, out.stderr
    quick = next(line.strip() for line in out.stdout.splitlines() if line.split()[:1] == ["quickstart"])
    assert quick.split()[1:3] == ["digits", "36"]  # 6 losses x 3 noise settings x 2 seeds


def test_a_cpu_share_of_zero_is_refused_by_train_sweep_and_tune_alike(tmp_path: Path) -> None:
    for args in (["train", "--dataset", "digits", "--loss", "ce", "--cpus-per-trial", "0"],
                 ["sweep", "quickstart", "--cpus-per-trial", "0"],
                 ["tune", "digits", "--loss", "drainage", "--noise", "asym:0.4", "--cpus-per-trial", "-1"]):
        out = run(*args, "--results", str(tmp_path / "res"), cwd=tmp_path)
        assert_user_error(out, "must be a finite number > 0", tmp_path / "res")
    out = run("train", "--cpus-per-trial", "inf", "--results", str(tmp_path / "res"), cwd=tmp_path)
    assert_user_error(out, "--cpus-per-trial=inf must be a finite number > 0", tmp_path / "res")


def test_a_usage_error_is_one_line_with_exit_2(tmp_path: Path) -> None:
    for args, needle in ((["train", "--epochs", "abc"], "Invalid value for '--epochs'"),
                         (["train", "--bogus"], "No such option: --bogus"),
                         (["sweep", "quickstart", "--max-concurrent", "x"], "Invalid value for '--max-concurrent'"),
                         (["reproduce"], "Missing argument 'sweep'"),
                         (["study", "show"], "Missing argument 'name'"),
                         (["study", "show", "s", "--top", "0"], "Invalid value for '--top'"),
                         (["nocommand"], "No such command 'nocommand'")):
        out = run(*args, "--results", str(tmp_path / "res"), cwd=tmp_path)
        assert_user_error(out, needle, tmp_path / "res")
        assert "--help" in out.stderr, out.stderr


def test_the_error_line_shows_the_message_as_written(tmp_path: Path) -> None:
    # Brackets and colons are text, not rich markup or emoji codes (":-1:" once became a thumb).
    spec = tmp_path / "spec.toml"
    spec.write_text('dataset = "digits"\n[[noise]]\ntype = "none"\n[[losses]]\nlabel = "CE"\n')
    out = run("sweep", str(spec), "--results", str(tmp_path / "res"), cwd=tmp_path)
    assert_user_error(out, "every [[losses]] entry needs a name", tmp_path / "res")
    out = run("tune", "digits", "--loss", "drainage", "--noise", "asym:0.2", "--space", "alpha=loguniform:-1:2",
              "--results", str(tmp_path / "res"), cwd=tmp_path)
    assert_user_error(out, "'loguniform:-1:2' is not a distribution", tmp_path / "res")


def test_a_results_folder_that_cannot_be_written_stops_before_anything_runs(tmp_path: Path) -> None:
    # A file where the results folder should be: train stopped only after training (a traceback).
    from results_helpers import HAND_ROWS, HAND_SWEEP, write_rows

    blocked = tmp_path / "results"
    blocked.write_text("not a folder")
    spec = tmp_path / "one.toml"
    spec.write_text('dataset = "digits"\nset = { epochs = 1 }\n[[noise]]\ntype = "none"\n[[losses]]\nname = "ce"\n')
    for args in (["train", "--set", "epochs=1"], ["sweep", str(spec)],
                 ["tune", "digits", "--loss", "drainage", "--noise", "asym:0.2", "--trials", "1", "--in-process"]):
        out = run(*args, "--results", str(blocked), cwd=tmp_path)
        assert_user_error(out, f"--results {blocked} is a file, not a folder", tmp_path / "none")
        assert "epoch" not in out.stdout, out.stdout  # nothing trained
        assert blocked.read_text() == "not a folder"

    from drainage_bench.analysis.store import ResultsStore

    root = write_rows(tmp_path / "store", HAND_ROWS)
    ResultsStore(root, HAND_SWEEP).refresh_indexes()  # reading builds the index (a cache) otherwise
    before = tree(root)
    for args, needle in ((["plot", HAND_SWEEP, "--out", str(blocked)], "is a file, not a folder"),
                         (["table", HAND_SWEEP, "--output", str(root / HAND_SWEEP)], "is a folder; name a file"),
                         (["table", HAND_SWEEP, "--output", str(blocked / "t.csv")],
                          f"--output {blocked / 't.csv'}: {blocked} is a file, not a folder")):
        out = run(*args, "--results", str(root), cwd=tmp_path)
        assert_user_error(out, needle, root, before)


def test_a_damaged_data_file_stops_sweep_and_tune_before_any_trial(tmp_path: Path, data_root: Path) -> None:
    # The files are all there, one is cut short: each trial failed on it (a sweep of failed records).
    from conftest import require_file

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).symlink_to(require_file(data_root / "MNIST" / "raw" / name))
    labels = require_file(data_root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").read_bytes()
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(labels[:1000])
    spec = tmp_path / "one.toml"
    spec.write_text('dataset = "mnist"\nset = { epochs = 1 }\n[[noise]]\ntype = "none"\n[[losses]]\nname = "ce"\n')
    for args in (["sweep", str(spec)],
                 ["tune", "mnist", "--loss", "drainage", "--noise", "asym:0.2", "--trials", "1", "--in-process"]):
        out = run(*args, "--data-root", str(tmp_path / "data"), "--results", str(tmp_path / "res"), cwd=tmp_path)
        assert_user_error(out, "train-labels-idx1-ubyte.gz cannot be read", tmp_path / "res")


def test_a_damaged_or_foreign_file_in_the_store_is_one_line_naming_it(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from results_helpers import HAND_ROWS, HAND_SWEEP, write_rows

    root = write_rows(tmp_path / "store", HAND_ROWS)
    trials = root / HAND_SWEEP / "trials"
    good = trials / f"{HAND_ROWS[0]['trial_id']}.parquet"
    for name, content, needle in (("cut.parquet", good.read_bytes()[:200], "magic bytes"),
                                  ("foreign.parquet", None, "foreign.parquet has no trial_id column")):
        bad = trials / name
        if content is None:
            pq.write_table(pa.table({"x": [1, 2]}), bad)  # a parquet file from elsewhere
        else:
            bad.write_bytes(content)
        before = tree(root)
        for args in (["table", HAND_SWEEP], ["plot", HAND_SWEEP], ["reproduce", HAND_SWEEP, bad.stem]):
            out = run(*args, "--results", str(root), cwd=tmp_path)
            assert_user_error(out, needle, root, before)
            assert str(trials) in out.stderr, out.stderr
        bad.unlink()


def test_a_metric_no_trial_has_stops_plot_before_any_figure(tmp_path: Path) -> None:
    # plot wrote the learning curves first, then stopped; the line named the drainage shares for any metric.
    from results_helpers import HAND_ROWS, HAND_SWEEP

    from drainage_bench.analysis.store import ResultsStore

    root = tmp_path / "store"
    store = ResultsStore(root, HAND_SWEEP)
    for row in HAND_ROWS:  # with per-epoch records: the learning curves have something to draw
        store.write_trial({**row, "sweep": HAND_SWEEP}, [{"epoch": 1, "train_loss": 1.0, "test_acc": row["final_test_acc"]}])
    store.refresh_indexes()
    before = tree(root)
    for command in ("plot", "table"):
        out = run(command, HAND_SWEEP, "--metric", "best_val_acc", "--results", str(root), cwd=tmp_path)
        assert_user_error(out, "best_val_acc does not apply to any selected trial: it exists for trials with a "
                               "validation split", root, before)


def test_a_setting_the_command_would_drop_is_refused(tmp_path: Path) -> None:
    # --set dataset=mnist trained digits; a sweep's --set seed=5 ran the spec's seeds; tune's --set seed its --seed.
    spec = tmp_path / "one.toml"
    spec.write_text('dataset = "digits"\nset = { dataset = "mnist" }\n[[noise]]\ntype = "none"\n[[losses]]\nname = "ce"\n')
    for args, needle in ((["train", "--set", "dataset=mnist"], "setting dataset='mnist' would be ignored"),
                         (["train", "--set", "loss=gce"], "the loss comes from --loss"),
                         (["sweep", str(spec)], "setting dataset='mnist' would be ignored"),
                         (["sweep", "quickstart", "--set", "seed=5"], "the seed comes from the spec's seeds"),
                         (["sweep", "quickstart", "--set", "noise_rate=0.3"], "the spec's [[noise]] (or --noise)"),
                         (["tune", "digits", "--loss", "drainage", "--noise", "asym:0.2", "--set", "seed=3"],
                          "the seed comes from --seed")):
        out = run(*args, "--results", str(tmp_path / "res"), cwd=tmp_path)
        assert_user_error(out, needle, tmp_path / "res")


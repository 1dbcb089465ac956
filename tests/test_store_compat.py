"""Upgrading never orphans a store: a store written by version 0.1 is found done by today's plan()
and read by table / plot / status / reproduce.

The store is not kept in git (it would be generated files): once per test session, version 0.1's
code (commit 8b75808, from this clone's history with `git archive`) runs the small spec
tests/fixtures/store-v0.1/v01.toml (4 digits trials, 1 epoch, real Ray) into a temporary folder."""
from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tarfile
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from drainage_bench.analysis.store import ResultsStore
from drainage_bench.config import TrialConfig
from drainage_bench.sweeps.spec import load_spec
from drainage_bench.sweeps.tune_runner import plan

FIXTURE = Path(__file__).parent / "fixtures" / "store-v0.1"
REPO = Path(__file__).resolve().parents[1]
V01_COMMIT = "8b75808"
CLI = [sys.executable, "-m", "drainage_bench.cli"]
# The trial_ids version 0.1 gave the fixture's four trials (its file names, written by 0.1).
V01_IDS = {"ce-clean-s0-003d8efb2a", "ce-asym0.2-s0-d9bc05df00",
           "drainage-clean-s0-63ad713430", "drainage-asym0.2-s0-20a9b9e273"}
# CE on clean digits as 0.1 recorded it, every field spelled out (not through a recipe, which
# may change): 0.1 hashed it to ce-clean-s0-003d8efb2a.
CE_CLEAN_V01 = dict(dataset="digits", loss="ce", model="digits_cnn", epochs=1, lr=0.05, seed=0, batch_size=64,
                    optimizer="sgd", momentum=0.9, schedule="cosine", weight_decay=0.001, grad_clip=5.0)


@pytest.fixture(scope="session")
def v01_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results root holding sweep `v01`, written by version 0.1's own code."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", V01_COMMIT, "drainage_bench"],
                             capture_output=True, timeout=60)
    if archive.returncode != 0:
        message = f"version 0.1 ({V01_COMMIT}) is not in this clone's history: {archive.stderr.decode().strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    base = tmp_path_factory.mktemp("v01")
    code = base / "code"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(code, filter="data")
    env = {**os.environ, "PYTHONPATH": str(code)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([*CLI, "sweep", str(FIXTURE / "v01.toml"), "--results", str(base / "res")],
                          cwd=base, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(base / "res" / "v01" / "ray", ignore_errors=True)
    return base / "res"


@pytest.fixture
def store_copy(v01_store: Path, tmp_path: Path) -> Path:
    """The 0.1 store copied (each test may write beside its records)."""
    root = tmp_path / "res"
    shutil.copytree(v01_store, root)
    shutil.copy(FIXTURE / "v01.toml", root / "v01.toml")
    return root


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_version_01_wrote_the_store_with_the_hand_written_trial_ids(v01_store: Path, store_copy: Path) -> None:
    assert {p.stem for p in (v01_store / "v01" / "trials").glob("*.parquet")} == V01_IDS
    assert {p.stem for p in (v01_store / "v01" / "samples").glob("*.parquet")} == {
        i for i in V01_IDS if i.startswith("drainage")}
    assert not (v01_store / "v01" / "index").exists()  # 0.1 had no index
    records = ResultsStore(store_copy, "v01").trials()
    assert set(records["version"]) == {"0.1.0"} and "torch_threads" not in records  # written before provenance


@pytest.mark.slow
def test_todays_configs_of_the_v01_spec_have_the_v01_trial_ids_and_plan_finds_them_done(store_copy: Path) -> None:
    configs = load_spec(str(FIXTURE / "v01.toml")).expand()
    assert {c.trial_id for c in configs} == V01_IDS
    state = plan(configs, ResultsStore(store_copy, "v01"))
    assert state.todo == [] and state.done == {i: "ok" for i in V01_IDS}


def test_a_field_added_with_its_default_leaves_the_trial_id_unchanged() -> None:
    assert TrialConfig(**CE_CLEAN_V01).trial_id == "ce-clean-s0-003d8efb2a"

    @dataclass(frozen=True)
    class Later(TrialConfig):  # a future version: one more field, whose default means "as before"
        openset_classes: int = 0

    assert Later(**CE_CLEAN_V01).trial_id == "ce-clean-s0-003d8efb2a"
    assert Later(**CE_CLEAN_V01, openset_classes=2).trial_id != "ce-clean-s0-003d8efb2a"
    # fields that are run conditions never enter the identity
    assert dataclasses.replace(TrialConfig(**CE_CLEAN_V01), deterministic=True,
                               device="cpu").trial_id == "ce-clean-s0-003d8efb2a"


def test_status_table_and_plot_read_the_v01_store_with_a_newer_record_beside_it(store_copy: Path) -> None:
    from results_helpers import record

    # A record as today's version writes it (newer columns) next to the 0.1 ones: GCE, clean, 90%.
    newer = record("gce", "GCE", "none", 0.0, 0, 0.90, sweep="v01", torch_threads=1, cpu_capability="AVX512",
                   deterministic_algorithms=False)
    ResultsStore(store_copy, "v01").write_trial(newer, [])
    status = run_cli("status", str(store_copy / "v01.toml"), "--results", str(store_copy), cwd=store_copy)
    assert status.returncode == 0, status.stderr
    assert "4 ok, 0 failed, 0 missing of 4 trials" in status.stdout
    table = run_cli("table", "v01", "--results", str(store_copy), "--format", "markdown", cwd=store_copy)
    assert table.returncode == 0, table.stderr
    # by hand: CE clean 499/540 = 92.407 %, CE asym 430/540 = 79.630 %, drainage asym 432/540 = 80.000 %,
    # realized asym noise 124/1257 = 9.865 %; GCE (the newer record) only clean, 90 %
    rows = {line.split("|")[1].strip(" *"): [c.strip(" *") for c in line.split("|")[2:-1]]
            for line in table.stdout.splitlines() if line.startswith("| ")}
    assert rows["CE"] == ["92.41", "79.63"] and rows["Drainage"] == ["92.41", "80.00"]
    assert rows["GCE"][0] == "90.00" and rows["Realized noise"] == ["0.00", "9.86"]
    out = store_copy / "figures"
    plotted = run_cli("plot", "v01", "--results", str(store_copy), "--out", str(out), cwd=store_copy)
    assert plotted.returncode == 0, plotted.stderr
    assert {"drainage_probability.png", "learning_curves_asym0.2.png", "final_test_acc_vs_noise.png"} <= {
        p.name for p in out.glob("*.png")}


@pytest.mark.slow
def test_a_v01_record_reproduces_with_todays_trainer(data_root: Path, store_copy: Path) -> None:
    """0.1's record of CE on clean digits (1 epoch, 1 thread: its cpus_per_trial) trains again to
    the same numbers: the record lacks torch_threads, so the CPU share decides."""
    from drainage_bench.reproduce import reproduce

    cmp = reproduce(store_copy, "v01", "ce-clean-s0-003d8efb2a", data_root=str(data_root))
    assert cmp.threads == 1 and cmp.device == "cpu"
    rows = {metric: (old, new, same) for metric, old, new, same in cmp.rows}
    assert rows["final_test_acc"] == (499 / 540, 499 / 540, True)
    assert cmp.identical, cmp.rows

"""The results store: atomic files, failed and finished records side by side, retries, progress."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from drainage_bench.analysis import store as store_mod
from drainage_bench.analysis.store import ResultsStore, atomic_write_parquet
from drainage_bench.config import build_config
from drainage_bench.sweeps.tune_runner import Progress, plan, write_failed


def ok_record(config, value: float) -> dict:
    return {"trial_id": config.trial_id, **config.to_dict(), "loss_display": "CE", "status": "ok",
            "error": None, "final_test_acc": value, "wall_seconds": 1.0}


def test_a_write_that_fails_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    def broken(table, where):
        Path(where).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.pq, "write_table", broken)
    with pytest.raises(OSError):
        atomic_write_parquet(pa.table({"a": [1]}), tmp_path / "x" / "t.parquet")
    assert list((tmp_path / "x").iterdir()) == []


def test_failed_and_finished_records_read_together_and_plan_skips_both(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path, "s")
    a, b, c = (build_config("digits", "ce", {"seed": s}) for s in range(3))
    store.write_trial(ok_record(a, 0.9), [{"epoch": 1, "test_acc": 0.9}])
    write_failed(store, b, "Diverged: nan")
    trials = store.trials().set_index("trial_id")
    assert trials.loc[a.trial_id, "status"] == "ok" and trials.loc[b.trial_id, "status"] == "failed"
    assert math.isnan(trials.loc[b.trial_id, "final_test_acc"])
    assert (trials["sweep"] == "s").all()
    assert [x.trial_id for x in plan([a, b, c], store).todo] == [c.trial_id]
    assert {x.trial_id for x in plan([a, b, c], store, retry_failed=True).todo} == {b.trial_id, c.trial_id}


def test_a_retried_trial_keeps_no_epochs_of_its_earlier_run(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path, "s")
    config = build_config("digits", "ce")
    store.write_trial(ok_record(config, 0.5), [{"epoch": 1, "test_acc": 0.5}], {"drainage_prob": [0.1]})
    write_failed(store, config, "the Ray worker died")
    assert store.epochs().empty and store.samples().empty
    assert store.statuses() == {config.trial_id: "failed"}


def test_progress_keeps_the_best_per_loss_in_the_metric_direction(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path, "s")
    configs = [build_config("digits", "drainage", {"seed": s}) for s in range(3)]
    write_failed(store, configs[0], "boom")  # only a failed record: nothing to rank yet
    lines: list[str] = []
    progress = Progress(plan=plan(configs, store), store=store, metric="drainage_clean", emit=lines.append)
    assert progress.best == {}
    for config, share in zip(configs[1:], (0.30, 0.10)):
        store.write_trial({**ok_record(config, 0.9), "loss_display": "Drainage",
                           "final_drainage_share_clean": share}, [])
        progress.trial_ended(config.trial_id)
    assert progress.best == {"Drainage": 0.10}  # lower is better for the clean share
    assert "2/2[/] done (0 failed)" in lines[-1] and "Drainage 10.0" in lines[-1]

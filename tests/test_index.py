"""The store's derived index: refreshed from new and replaced trial files, rebuilt after deletion,
safe under two refreshing processes, and equal to reading the trial files one by one; filters
pushed down into the read give what the exact filters give; the table path imports no torch,
Ray or Optuna."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from drainage_bench.analysis import index
from drainage_bench.analysis import tables as T
from drainage_bench.analysis.store import ResultsStore
from results_helpers import HAND_ROWS, HAND_SWEEP, record, write_rows


def rows(n: int, start: int = 0, **extra) -> list[dict]:
    """n CE records on clean labels, seeds start..start+n-1 (value 0.5 + seed / 10,000)."""
    return [record("ce", "CE", "none", 0.0, s, 0.5 + s / 10_000, **extra) for s in range(start, start + n)]


def direct(root: Path, kind: str = "trials") -> pd.DataFrame:
    """Every file read on its own by pandas (not the store's reader), in file order."""
    files = sorted((root / HAND_SWEEP / kind).glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def indexed(root: Path, kind: str = "trials") -> pd.DataFrame:
    return ResultsStore(root, HAND_SWEEP).read(kind).reset_index(drop=True)


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    # values compared, missing as missing: pandas reads a file whose column is all null as object (None)
    def plain(df: pd.DataFrame) -> pd.DataFrame:
        df = df[sorted(df.columns)].astype(object)
        return df.where(df.notna(), None)

    pd.testing.assert_frame_equal(plain(a), plain(b))


def test_the_index_follows_new_replaced_and_removed_files(tmp_path: Path) -> None:
    write_rows(tmp_path, rows(70))  # more than DIRECT_MAX: reads go through the index
    index_file = tmp_path / HAND_SWEEP / "index" / "trials.parquet"
    same(indexed(tmp_path), direct(tmp_path))
    assert index_file.exists() and pq.read_metadata(index_file).num_rows == 70

    write_rows(tmp_path, rows(1, start=70))  # a new trial
    first = indexed(tmp_path)
    assert len(first) == 71 and 70 in set(first["seed"])
    same(first, direct(tmp_path))

    # A retried trial: the same trial_id, a new record (failed now), a new file under the old name.
    write_rows(tmp_path, [record("ce", "CE", "none", 0.0, 3, float("nan"), status="failed")])
    after = indexed(tmp_path).set_index("trial_id")
    assert after.loc["ce-clean-s3-hand", "status"] == "failed" and len(after) == 71
    same(indexed(tmp_path), direct(tmp_path))

    (tmp_path / HAND_SWEEP / "trials" / "ce-clean-s5-hand.parquet").unlink()
    assert "ce-clean-s5-hand" not in set(indexed(tmp_path)["trial_id"])

    index_file.unlink()  # deleting the index loses nothing
    same(indexed(tmp_path), direct(tmp_path))
    assert len(indexed(tmp_path)) == 70 and index_file.exists()


def test_any_folder_of_per_trial_files_is_indexed_the_same_way(tmp_path: Path) -> None:
    folder = tmp_path / HAND_SWEEP / "openset"  # a kind another feature adds
    folder.mkdir(parents=True)
    for s in range(80):
        pd.DataFrame({"trial_id": [f"t{s}"] * 2, "unknown": ["svhn", "noise"], "auroc": [s / 100, 0.5]}).to_parquet(
            folder / f"t{s}.parquet")
    got = indexed(tmp_path, "openset")
    assert len(got) == 160 and got["auroc"].sum() == sum(s / 100 for s in range(80)) + 80 * 0.5
    same(got, direct(tmp_path, "openset"))
    some = ResultsStore(tmp_path, HAND_SWEEP).read("openset", [f"t{s}" for s in range(70)])
    assert sorted(set(some["trial_id"])) == sorted(f"t{s}" for s in range(70))


def test_a_refresh_read_by_threads_equals_pandas_file_by_file(tmp_path: Path, monkeypatch) -> None:
    # Files of two schemas (GCE records carry a column CE records lack), read by the refresh's threads.
    monkeypatch.setattr(index, "READ_THREADS_FROM", 2)
    gce = [record("gce", "GCE", "none", 0.0, s, 0.6 + s / 10_000, loss_q=0.7) for s in range(40)]
    write_rows(tmp_path, rows(50) + gce)
    got = indexed(tmp_path)
    same(got, direct(tmp_path))
    assert got["loss_q"].isna().sum() == 50 and (got["loss_q"].dropna() == 0.7).all()

    write_rows(tmp_path, rows(30, start=50))  # an incremental refresh: 30 new files beside the kept rows
    same(indexed(tmp_path), direct(tmp_path))


def test_an_index_an_older_version_built_with_a_foreign_file_is_rebuilt_and_refuses_it(tmp_path: Path) -> None:
    import pyarrow as pa

    from drainage_bench.errors import UserError

    write_rows(tmp_path, rows(70))
    trials = tmp_path / HAND_SWEEP / "trials"
    pq.write_table(pa.table({"x": [1]}), trials / "foreign.parquet")  # copied in from elsewhere
    index_file = tmp_path / HAND_SWEEP / "index" / "trials.parquet"
    index.read(trials, index_file, key=None)  # as versions before the check built it: a row without trial_id
    assert pq.read_table(index_file).column("trial_id").null_count == 1
    with pytest.raises(UserError, match="foreign.parquet has no trial_id column"):
        ResultsStore(tmp_path, HAND_SWEEP).read("trials")
    (trials / "foreign.parquet").unlink()
    same(indexed(tmp_path), direct(tmp_path))


def test_kinds_whose_rows_do_not_name_their_trial_are_read_without_the_key(tmp_path: Path) -> None:
    # Per-sample files (samples, openset) carry no trial_id column: only trials, epochs and
    # corruptions records must have one.
    folder = tmp_path / HAND_SWEEP / "samples"
    folder.mkdir(parents=True)
    for s in range(3):
        pd.DataFrame({"drainage_prob": [s / 10, 0.5]}).to_parquet(folder / f"t{s}.parquet")
    got = ResultsStore(tmp_path, HAND_SWEEP).read("samples")
    assert sorted(got["drainage_prob"]) == [0.0, 0.1, 0.2, 0.5, 0.5, 0.5]


READER = textwrap.dedent("""
    import sys, time
    from drainage_bench.analysis.store import ResultsStore
    root, start = sys.argv[1], float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.005)
    for _ in range(6):
        df = ResultsStore(root, "hand").trials()
        assert df["trial_id"].is_unique, "a trial read twice"
    print(len(df))
""")


def test_two_processes_refreshing_at_once_while_trials_are_written(tmp_path: Path) -> None:
    import time

    write_rows(tmp_path, rows(200))
    start = time.time() + 2.0  # both readers begin refreshing the same missing index together
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(tmp_path), str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    while time.time() < start:
        time.sleep(0.01)
    write_rows(tmp_path, rows(50, start=200))  # new trials land while they refresh
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        assert 200 <= int(out) <= 250
    final = indexed(tmp_path)
    assert len(final) == 250
    same(final, direct(tmp_path))


def test_pushed_down_filters_select_what_the_exact_filters_select(tmp_path: Path) -> None:
    extra = [record("gce", "GCE", "asym", 0.4, s, 0.6, noise_key=None) for s in range(40)]
    write_rows(tmp_path, rows(60) + extra + HAND_ROWS)
    where, losses = ["seed=0,1,2", "noise_rate=0.4,0", "noise_key=none"], ["ce", "GCE", "Drainage"]
    got = T.load_selection(tmp_path, [HAND_SWEEP], where, losses).trials
    # The same selection by hand from the files: seeds 0-2, rate 0 or 0.4, losses ce, gce, drainage.
    every = direct(tmp_path)
    want = every[every["seed"].isin([0, 1, 2]) & every["noise_rate"].isin([0.0, 0.4])
                 & every["loss"].isin(["ce", "gce", "drainage"])]
    assert sorted(got["trial_id"]) == sorted(want["trial_id"])
    # By hand: CE clean and asym 0.4 x seeds 0-2 (the hand CE rows replace three of rows()), GCE clean
    # seeds 0-1 and asym 0.4 seeds 0-2, Drainage 2 settings x 3 seeds: 6 + 5 + 6.
    assert len(got) == 17
    narrow = T.load_selection(tmp_path, [HAND_SWEEP], where, losses, metric="final_test_acc").trials
    assert "final_drainage_share_clean" not in narrow and "final_test_acc" in narrow  # projected


NO_HEAVY = textwrap.dedent("""
    import sys
    from drainage_bench.cli import app
    for args in (["table", "hand", "--results", sys.argv[1], "--where", "seed=0,1"],
                 ["status", sys.argv[2], "--results", sys.argv[1]]):
        app(args, standalone_mode=False)
    # half a second of imports each that a plain table or status does not need
    print("SLOW-IMPORTS", ",".join(sorted(m for m in ("scipy.stats", "sklearn", "matplotlib") if m in sys.modules)))
    app(["plot", "hand", "--results", sys.argv[1]], standalone_mode=False)
    heavy = sorted(m for m in ("torch", "ray", "optuna") if m in sys.modules)
    print("HEAVY", ",".join(heavy))
""")


def test_table_status_and_plot_import_no_torch_ray_or_optuna(tmp_path: Path) -> None:
    root = write_rows(tmp_path, HAND_ROWS)
    spec = tmp_path / "hand.toml"
    spec.write_text('dataset = "digits"\nseeds = [0, 1, 2]\n[[noise]]\ntype = "none"\n[[noise]]\ntype = "asym"\n'
                    'rates = [0.4]\n[[losses]]\nname = "ce"\n[[losses]]\nname = "drainage"\n')
    # The trial list as `sweep` records it (expanding the spec needs the trainer: here, not there).
    from drainage_bench.sweeps.expected import record_expected
    from drainage_bench.sweeps.spec import load_spec

    record_expected(ResultsStore(root, "hand"), load_spec(str(spec)), load_spec(str(spec)).expand())
    out = subprocess.run([sys.executable, "-c", NO_HEAVY, str(root), str(spec)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY \n" in out.stdout, out.stdout[-500:]
    assert "SLOW-IMPORTS \n" in out.stdout, out.stdout[-500:]
    assert "hand: 0 ok, 0 failed, 12 missing of 12 trials" in out.stdout  # hand ids are no spec's ids
    meta = json.loads(pq.read_schema(root / "hand" / "expected.parquet").metadata[b"drainage_bench"])
    assert meta["rows"] == ["CE", "Drainage"] and meta["metric"] == "final_test_acc"


def test_per_sample_files_are_read_each_row_tagged_with_its_trial(tmp_path: Path) -> None:
    import pyarrow as pa

    pq.write_table(pa.table({"p": [0.1, 0.2, 0.3]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"p": pa.array([], pa.float64())}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"p": [0.9, 0.8], "extra": [True, False]}), tmp_path / "c.parquet")
    table = index.read_tagged({k: tmp_path / f"{k}.parquet" for k in ("c", "b", "a")}).to_pandas()
    assert table["trial_id"].astype(str).tolist() == ["c", "c", "a", "a", "a"]  # the order asked for
    assert table["p"].tolist() == [0.9, 0.8, 0.1, 0.2, 0.3]
    assert table["extra"].tolist()[:2] == [True, False] and table["extra"].isna().tolist()[2:] == [True] * 3
    assert ResultsStore(tmp_path, "none").samples().empty  # a sweep without a samples folder: no rows, no error

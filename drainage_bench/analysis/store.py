"""The results store: one parquet file per finished trial, written atomically.

    <root>/<sweep>/trials/<trial_id>.parquet   one row: trial_id, every TrialConfig field, metrics
    <root>/<sweep>/epochs/<trial_id>.parquet   per-epoch metrics
    <root>/<sweep>/samples/<trial_id>.parquet  per training sample at the end (drainage runs only):
                                               drainage probability, clean/mislabeled
    <root>/<sweep>/noise/<hash>.npz            the labels trials trained on, once per content hash
                                               (noise_files.write_noise_record); records name it
                                               in their `noise_hash` column
    <root>/<sweep>/openset/<trial_id>.parquet  per open-set test sample (open-set runs only): is_unknown,
                                               labels, prediction, scores (higher = more unknown)
    <root>/<sweep>/corruptions/<trial_id>.parquet  trials with ``corruptions`` set: error, NLL, ECE per
                                               (corruption, severity)
    <root>/<sweep>/ray/                        Ray Tune's own experiment folders

Every file is written to a temporary name in the same folder and renamed into place, so a killed
run never leaves a half-written record: a trial's record exists completely or not at all. The
trial record is written last, so its presence means the epoch and sample files are complete.

Reading goes through a derived index per folder (``<sweep>/index/<kind>.parquet``, see
`analysis.index`), refreshed from the files newer than it; deleting it loses nothing. Any folder
of per-trial files is a kind (trials, epochs, and the ones feature modules add); per-sample files
are large and are read per trial, never indexed. A few trials named by id are read directly.

    <root>/<sweep>/expected.parquet            the trial list of the sweep's last run (written by
                                               `sweep` and `status`): what `table` counts as missing
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from drainage_bench import noise_files
from drainage_bench.analysis import index
from drainage_bench.atomic import atomic_write
from drainage_bench.errors import UserError

DEFAULT_ROOT = Path("results")
UNINDEXED = frozenset({"samples"})  # one row per training sample: read per trial
INDEXED = ("trials", "epochs", "corruptions")  # the kinds `table` and `plot` read through `read`
DIRECT_MAX = 64                     # up to this many trials named by id are read from their files
EXPECTED = "expected.parquet"


class ResultsStore:
    """The results of one sweep, in ``<root>/<sweep>/``."""

    def __init__(self, root: str | Path, sweep: str) -> None:
        self.root = Path(root)
        self.sweep = sweep
        self.path = self.root / sweep

    # -- writing -----------------------------------------------------------------------------

    def write_trial(self, record: dict[str, Any], epochs: list[dict[str, Any]],
                    samples: dict[str, Any] | None = None, noise: dict[str, Any] | None = None,
                    openset: dict[str, Any] | None = None, corruptions: list[dict[str, Any]] | None = None) -> Path:
        """Write a finished (or failed) trial: its noise (once per hash), epochs, samples, open-set
        scores and corruption rows first, the record last. A part that is absent is removed (a
        retried trial must not keep the files of its earlier run)."""
        trial_id = record["trial_id"]
        if noise:
            noise_files.write_noise_record(self.path / "noise", noise)
        rows = {
            "epochs": pa.Table.from_pylist([{"trial_id": trial_id, **row} for row in epochs]) if epochs else None,
            "samples": pa.table(samples) if samples else None,
            "openset": pa.table(openset) if openset else None,
            "corruptions": pa.Table.from_pylist([{"trial_id": trial_id, **row} for row in corruptions])
            if corruptions else None,
        }
        for kind, table in rows.items():
            path = self.path / kind / f"{trial_id}.parquet"
            if table is not None:
                atomic_write_parquet(table, path)
            else:
                path.unlink(missing_ok=True)
        flat = {k: (json.dumps(v, sort_keys=True) if isinstance(v, dict) else v) for k, v in record.items()}
        return atomic_write_parquet(pa.Table.from_pylist([flat]), self.trial_path(trial_id))

    def trial_path(self, trial_id: str) -> Path:
        return self.path / "trials" / f"{trial_id}.parquet"

    def noise_path(self, noise_hash: str) -> Path:
        return noise_files.noise_path(self.path / "noise", noise_hash)

    def noise(self, noise_hash: str) -> dict[str, Any]:
        """The stored noise record a trial names (its `noise_hash`): labels, transition, rates."""
        path = self.noise_path(noise_hash)
        if not path.is_file():
            raise UserError(f"no noise record {noise_hash} in {self.path / 'noise'}; the trial was written "
                            "before noise records existed, or the file was removed")
        return noise_files.read_noise_record(path)

    # -- reading -----------------------------------------------------------------------------

    def trial_ids(self) -> set[str]:
        """The trial_ids with a record (finished or failed)."""
        folder = self.path / "trials"
        return {p.stem for p in trial_files(folder)} if folder.is_dir() else set()

    def read(self, kind: str, trial_ids: Iterable[str] | None = None, columns: list[str] | None = None,
             filter_for: index.FilterFor | None = None) -> pd.DataFrame:
        """The rows of one kind of record (``trials``, ``epochs``, ...), all or some trial_ids,
        projected to `columns` and filtered by `filter_for(schema)` (pushed down into the read)."""
        folder = self.path / kind
        if not folder.is_dir():
            return pd.DataFrame()
        ids = None if trial_ids is None else sorted(set(trial_ids))
        key = index.KEY if kind in INDEXED else None  # the kinds whose every row names its trial
        with _readable(folder):
            if kind in UNINDEXED or (ids is not None and len(ids) <= DIRECT_MAX):
                files = trial_files(folder, ids)
                if not files:
                    return pd.DataFrame()
                table = index.read_files(files, columns, filter_for, key)
            else:
                table = index.read(folder, self.path / "index" / f"{kind}.parquet", columns,
                                   _with_ids(filter_for, ids), key)
        return table.to_pandas()

    def trials(self, trial_ids: Iterable[str] | None = None, columns: list[str] | None = None,
               filter_for: index.FilterFor | None = None) -> pd.DataFrame:
        """The trial records of the sweep (all, or some trial_ids) as one table (empty if none)."""
        df = self.read("trials", trial_ids, columns, filter_for)
        if not df.empty:
            sweep = df["sweep"].fillna(self.sweep) if "sweep" in df else self.sweep
            df = df.drop(columns="sweep", errors="ignore")
            df.insert(0, "sweep", sweep)
        return df

    def epochs(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return self.read("epochs", trial_ids)

    def samples(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Per training sample rows of the drainage trials (all, or some trial_ids)."""
        return self.read_tagged("samples", trial_ids)

    def openset(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Per open-set test sample rows (see trainer/openset.py's openset_scores)."""
        return self.read_tagged("openset", trial_ids)

    def read_tagged(self, kind: str, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per sample of a per-sample kind (``samples``, ``openset``: too many rows per trial
        for the index), each with its ``trial_id`` (a categorical column); one pass over the files."""
        folder = self.path / kind
        if not folder.is_dir():
            return pd.DataFrame()
        with _readable(folder):
            table = index.read_tagged({p.stem: p for p in trial_files(folder, trial_ids)})
        return table.to_pandas() if table.num_rows else pd.DataFrame()

    def corruptions(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Per (trial, corruption, severity): group, error, nll, ece."""
        return self.read("corruptions", trial_ids)

    def refresh_indexes(self) -> None:
        """Bring the index of every kind that `read` indexes up to date (at the end of a sweep, so
        the first `table` or `plot` after it reads one file instead of one per trial)."""
        for kind in INDEXED:
            self.read(kind, columns=[])

    def statuses(self) -> dict[str, str]:
        """trial_id -> status ('ok' or 'failed')."""
        df = self.read("trials", columns=["trial_id", "status"])
        return dict(zip(df["trial_id"], df["status"])) if not df.empty else {}

    # -- the expected trials -----------------------------------------------------------------

    def write_expected(self, expected: pd.DataFrame, meta: dict[str, Any]) -> Path:
        """The sweep's trial list (one row per trial: trial_id, its fields, loss_display) and
        what the table needs of its spec (`meta`: rows, metric, spec_sha256), atomically."""
        table = pa.Table.from_pandas(expected, preserve_index=False)
        table = table.replace_schema_metadata({b"drainage_bench": json.dumps(meta).encode()})
        return atomic_write_parquet(table, self.path / EXPECTED)

    def expected(self) -> tuple[pd.DataFrame | None, dict[str, Any]]:
        """(the trial list, its meta) as `write_expected` wrote them; (None, {}) without the file."""
        path = self.path / EXPECTED
        if not path.exists():
            return None, {}
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise UserError(f"cannot read {path}: {err}; remove it (`drainage-bench status` writes it again)") from None
        meta = json.loads((table.schema.metadata or {}).get(b"drainage_bench", b"{}"))
        return table.to_pandas(), meta


def _with_ids(filter_for: index.FilterFor | None, ids: list[str] | None) -> index.FilterFor | None:
    """`filter_for`, and (with `ids`) only those trial_ids."""
    if ids is None:
        return filter_for

    def both(schema: pa.Schema):
        expression = ds.field("trial_id").isin(ids)
        extra = filter_for(schema) if filter_for is not None else None
        return expression if extra is None else expression & extra

    return both


def trial_files(folder: Path, trial_ids: Iterable[str] | None = None) -> list[Path]:
    """The per-trial files of `folder`: all of them, or those of `trial_ids` that exist; by trial_id."""
    if trial_ids is None:
        return sorted(folder.glob("*.parquet"))
    return [p for p in (folder / f"{t}.parquet" for t in sorted(set(trial_ids))) if p.exists()]


@contextmanager
def _readable(folder: Path):
    """A file of `folder` that parquet cannot read becomes one line saying which folder and what to do."""
    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
        raise UserError(f"cannot read the results in {folder}: {err}; remove the damaged file") from None


def atomic_write_parquet(table: pa.Table, path: Path) -> Path:
    """Write `table` to `path` through a temporary file in the same folder and a rename."""
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def list_sweeps(root: str | Path) -> list[str]:
    """Sweeps that have a results folder with trials under `root`."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "trials").is_dir())

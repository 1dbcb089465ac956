"""The results store: one parquet file per finished trial, written atomically.

    <root>/<sweep>/trials/<trial_id>.parquet   one row: trial_id, every TrialConfig field, metrics
    <root>/<sweep>/epochs/<trial_id>.parquet   per-epoch metrics
    <root>/<sweep>/samples/<trial_id>.parquet  per training sample at the end (drainage runs only):
                                               drainage probability, clean/mislabeled
    <root>/<sweep>/noise/<hash>.npz            the labels trials trained on, once per content hash
                                               (noise_files.write_noise_record); records name it
                                               in their `noise_hash` column
    <root>/<sweep>/corruptions/<trial_id>.parquet  trials with ``corruptions`` set: error, NLL, ECE per
                                               (corruption, severity)
    <root>/<sweep>/ray/                        Ray Tune's own experiment folders

Every file is written to a temporary name in the same folder and renamed into place, so a killed
run never leaves a half-written record: a trial's record exists completely or not at all. The
trial record is written last, so its presence means the epoch and sample files are complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from drainage_bench import noise_files
from drainage_bench.atomic import atomic_write
from drainage_bench.errors import UserError

DEFAULT_ROOT = Path("results")


class ResultsStore:
    """The results of one sweep, in ``<root>/<sweep>/``."""

    def __init__(self, root: str | Path, sweep: str) -> None:
        self.root = Path(root)
        self.sweep = sweep
        self.path = self.root / sweep

    # -- writing -----------------------------------------------------------------------------

    def write_trial(self, record: dict[str, Any], epochs: list[dict[str, Any]],
                    samples: dict[str, Any] | None = None, noise: dict[str, Any] | None = None,
                    corruptions: list[dict[str, Any]] | None = None) -> Path:
        """Write a finished (or failed) trial: its noise (once per hash), epochs, samples and
        corruption rows first, the record last."""
        trial_id = record["trial_id"]
        if noise:
            noise_files.write_noise_record(self.path / "noise", noise)
        epochs_path = self.path / "epochs" / f"{trial_id}.parquet"
        samples_path = self.path / "samples" / f"{trial_id}.parquet"
        corruptions_path = self.path / "corruptions" / f"{trial_id}.parquet"
        if corruptions:
            atomic_write_parquet(pa.Table.from_pylist([{"trial_id": trial_id, **row} for row in corruptions]),
                                 corruptions_path)
        else:
            corruptions_path.unlink(missing_ok=True)
        if epochs:
            rows = [{"trial_id": trial_id, **row} for row in epochs]
            atomic_write_parquet(pa.Table.from_pylist(rows), epochs_path)
        else:  # a retried trial must not keep the epochs of its earlier run
            epochs_path.unlink(missing_ok=True)
        if samples:
            atomic_write_parquet(pa.table(samples), samples_path)
        else:
            samples_path.unlink(missing_ok=True)
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
        return {p.stem for p in folder.glob("*.parquet")} if folder.is_dir() else set()

    def trials(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The trial records of the sweep (all, or some trial_ids) as one table (empty if none)."""
        df = read_folder(self.path / "trials", trial_ids)
        if not df.empty:
            sweep = df["sweep"].fillna(self.sweep) if "sweep" in df else self.sweep
            df = df.drop(columns="sweep", errors="ignore")
            df.insert(0, "sweep", sweep)
        return df

    def epochs(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return read_folder(self.path / "epochs", trial_ids)

    def samples(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return read_folder(self.path / "samples", trial_ids)

    def corruptions(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Per (trial, corruption, severity): group, error, nll, ece."""
        return read_folder(self.path / "corruptions", trial_ids)

    def statuses(self) -> dict[str, str]:
        """trial_id -> status ('ok' or 'failed')."""
        df = read_folder(self.path / "trials", columns=["trial_id", "status"])
        return dict(zip(df["trial_id"], df["status"])) if not df.empty else {}


def read_folder(folder: Path, trial_ids: Iterable[str] | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """All parquet files of a folder (optionally only some trial_ids) as one DataFrame.

    Files may have different columns (losses have different parameters): the schemas are
    unified, missing columns read as null.
    """
    if not folder.is_dir():
        return pd.DataFrame()
    if trial_ids is None:
        files = sorted(folder.glob("*.parquet"))
    else:
        files = [p for p in (folder / f"{t}.parquet" for t in sorted(set(trial_ids))) if p.exists()]
    if not files:
        return pd.DataFrame()
    try:
        schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
        table = ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table(columns=columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
        raise UserError(f"cannot read the results in {folder}: {err}; remove the damaged file") from None
    return table.to_pandas()


def atomic_write_parquet(table: pa.Table, path: Path) -> Path:
    """Write `table` to `path` through a temporary file in the same folder and a rename."""
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def list_sweeps(root: str | Path) -> list[str]:
    """Sweeps that have a results folder with trials under `root`."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "trials").is_dir())

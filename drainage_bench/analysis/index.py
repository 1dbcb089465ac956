"""A derived, rebuildable index of one folder of per-trial parquet files.

The per-trial files (``<sweep>/<kind>/<trial_id>.parquet``) stay the source of truth: each is
written once, atomically, by the worker that ran the trial, so any number of writers never
contend. Reading thousands of them one by one is slow (one open, one footer, one schema each),
so readers keep one consolidated file per folder, ``<sweep>/index/<kind>.parquet``: every row of
every trial file plus two columns saying where it came from:

    _file    the trial file's name
    _stamp   "inode:mtime_ns:size" of that file when it was read

A refresh lists the folder (one stat per file, no reads), keeps the index rows whose file still
has the same stamp, reads only the files that are new or were replaced (a retried trial is a new
file: os.replace gives it a new inode), drops the rows of files that are gone, and writes the
result to a temporary file that is renamed over the index. A file is stat'ed *before* it is read,
so a file replaced in between is seen as stale on the next refresh, never missed. Two readers that
refresh at once each write a complete index of their own and rename it; whichever rename comes
last wins, and both are correct. Deleting the index loses nothing: the next read rebuilds it.
Where the results folder is read-only the index is built in memory and not written.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from drainage_bench.atomic import atomic_write

FILE, STAMP = "_file", "_stamp"
KEY = "trial_id"  # every row of a per-trial file carries its trial's id
READ_THREADS, READ_THREADS_FROM = 4, 256  # threads for a refresh that reads at least this many files
# Builds a row filter once the columns are known: schema -> expression (None: every row).
FilterFor = Callable[[pa.Schema], "pc.Expression | None"]


def stamps(folder: Path) -> dict[str, str]:
    """name -> "inode:mtime_ns:size" of every parquet file in `folder` (temporary files excluded)."""
    out = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return out
    for entry in entries:
        if entry.name.endswith(".parquet") and not entry.name.startswith("."):
            try:
                st = entry.stat()
            except FileNotFoundError:  # removed while listing
                continue
            out[entry.name] = f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
    return out


def _read_file(path: Path, stamp: str, key: str | None) -> pa.Table | None:
    """One trial file with its `_file` and `_stamp` columns (None if it is gone).

    Read through `ParquetFile` in one thread, without pre-buffering: a trial file is one small row
    group, and this costs 2.4x less than `pq.read_table` (which sets up a dataset per file); the
    refresh reads several files at once instead (`_read_new`)."""
    try:
        table = pq.ParquetFile(path, pre_buffer=False).read(use_threads=False)
    except FileNotFoundError:  # replaced or removed since it was listed: the next refresh sees it
        return None
    _require_key(path, table.schema, key)
    n = table.num_rows
    return table.append_column(FILE, pa.array([path.name] * n, pa.string())).append_column(
        STAMP, pa.array([stamp] * n, pa.string()))


def _read_new(folder: Path, current: dict[str, str], names: list[str], key: str | None) -> list[pa.Table | None]:
    """The files `names` of `folder`, read by a few threads (pyarrow decodes without the GIL)."""
    if len(names) < READ_THREADS_FROM:
        return [_read_file(folder / n, current[n], key) for n in names]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, cpus)) as pool:
        return list(pool.map(lambda n: _read_file(folder / n, current[n], key), names, chunksize=64))


def _require_key(path: Path, schema: pa.Schema, key: str | None) -> None:
    """A record of a kind that names its trial in every row (`key`: trials, epochs, corruptions)
    without that column (a parquet file copied in from elsewhere) is refused like a damaged one."""
    if key is not None and key not in schema.names:
        raise pa.ArrowInvalid(f"{path.name} has no {key} column, so it is not a drainage-bench record")


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Tables whose columns differ (losses have different parameters): missing columns are null."""
    return pa.concat_tables(tables, promote_options="permissive")


def _rebuild(folder: Path, index_path: Path, current: dict[str, str], known_stamps: dict[str, str] | None,
             old: Callable[[], pa.Table], key: str | None) -> pa.Table:
    """The index of `folder` from the rows of `old()` whose file has the same stamp and the files
    that are new or were replaced; written in place of the index file (removed when empty)."""
    keep = set() if known_stamps is None else {f for f, s in known_stamps.items() if current.get(f) == s}
    parts = []
    if keep:
        rows = old()
        parts.append(rows.filter(pc.is_in(rows.column(FILE), value_set=pa.array(sorted(keep), pa.string()))))
    parts.extend(t for t in _read_new(folder, current, sorted(set(current) - keep), key) if t is not None)
    parts = [p for p in parts if p.num_rows]
    if not parts:
        _remove(index_path)
        return pa.table({FILE: pa.array([], pa.string()), STAMP: pa.array([], pa.string())})
    table = _concat(parts)
    table = table.take(pc.sort_indices(table, sort_keys=[(FILE, "ascending")]))  # file order, as a direct read
    _write(table, index_path)
    return table


def read(folder: Path, index_path: Path, columns: list[str] | None = None,
         filter_for: FilterFor | None = None, key: str | None = KEY) -> pa.Table:
    """The rows of every file of `folder` (refreshing the index first), projected to `columns`
    (those that exist) and filtered by `filter_for(schema)`, pushed down into the parquet read.
    With `key`, every file must have that column (`_require_key`); an index an older version built
    with a file lacking it (null keys) is rebuilt, which refuses that file.

    The index file is mapped once and every read of it goes through that mapping: another reader
    renaming a fresh index over the path meanwhile cannot mix the footer of one file with the
    pages of the other (a second open by path could)."""
    current = stamps(folder)
    try:
        mapped = pa.memory_map(str(index_path))
    except OSError:  # no index yet (FileNotFoundError among them)
        mapped = None
    if mapped is not None:
        with mapped:
            try:
                fragment = ds.ParquetFileFormat().make_fragment(mapped)
                keyed = key is not None and key in fragment.physical_schema.names
                known = fragment.to_table(columns=[FILE, STAMP] + ([key] if keyed else []))
                known_stamps = dict(zip(known.column(FILE).to_pylist(), known.column(STAMP).to_pylist()))
                if key is not None and known.num_rows and (not keyed or known.column(key).null_count):
                    known_stamps = None  # a foreign file got in before the check existed
            except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, OSError):  # damaged or foreign: rebuild
                known_stamps = None
            if known_stamps == current:  # current: the selection straight from the mapped file
                return _select(fragment, columns, filter_for)
            if known_stamps is not None:
                return _select(ds.dataset(_rebuild(folder, index_path, current, known_stamps, fragment.to_table,
                                                   key)), columns, filter_for)
    return _select(ds.dataset(_rebuild(folder, index_path, current, None, pa.table, key)), columns, filter_for)


def read_files(files: list[Path], columns: list[str] | None = None, filter_for: FilterFor | None = None,
               key: str | None = KEY) -> pa.Table:
    """The same selection from some trial files directly (a few trials: no index needed)."""
    schemas = [pq.read_schema(f) for f in files]
    for path, schema in zip(files, schemas):
        _require_key(path, schema, key)
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    return _select(ds.dataset([str(f) for f in files], schema=schema, format="parquet"), columns, filter_for)


def read_tagged(files: dict[str, Path], columns: list[str] | None = None, tag: str = "trial_id") -> pa.Table:
    """The rows of several trial files, each row with the key it came under in `files` (a
    dictionary-encoded `tag` column): per-sample records, too many rows per trial for the index,
    read as one dataset (pyarrow's threads, rows in file order; each file's row count from its
    footer). Columns a file lacks are null."""
    if not files:
        return pa.table({tag: pa.array([], pa.string())})
    keys, paths = list(files), [str(p) for p in files.values()]
    fragments = list(ds.dataset(paths, format="parquet").get_fragments())
    schema = pa.unify_schemas([f.physical_schema for f in fragments], promote_options="permissive")
    source = ds.dataset(paths, schema=schema, format="parquet")
    table = _select(source, columns, None)
    counts = [f.metadata.num_rows for f in fragments]
    codes = pa.array(np.repeat(np.arange(len(keys), dtype=np.int32), counts))
    return table.append_column(tag, pa.DictionaryArray.from_arrays(codes, pa.array(keys, pa.string())))


def _select(source: ds.Dataset | ds.Fragment, columns: list[str] | None, filter_for: FilterFor | None) -> pa.Table:
    schema = source.physical_schema if isinstance(source, ds.Fragment) else source.schema
    names = [n for n in schema.names if n not in (FILE, STAMP)]
    wanted = names if columns is None else [c for c in dict.fromkeys(columns) if c in names]
    expression = filter_for(schema) if filter_for is not None else None
    return source.to_table(columns=wanted, filter=expression)


def _write(table: pa.Table, path: Path) -> None:
    try:
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    except OSError:  # a read-only results folder: the index lives in memory this time
        pass


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass

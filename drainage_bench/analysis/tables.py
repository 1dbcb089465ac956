"""Paper tables from the results store: one row per loss, one column per noise setting.

The table is a small pandas pipeline:

    load_selection(root, sweeps, where, losses)   the trial records, filters pushed down into the
                                                   read (+ the trial list the sweep's run recorded
                                                   in expected.parquet, to count the missing ones)
      -> aggregate(selection, metric)              TableData: mean / std / n per (row, column),
                                                   ranks, realized noise rate per column
      -> format_table(data, fmt)                   terminal | markdown | latex | csv | json

Cells are ``mean ± std`` over seeds, in percent; std is the *sample* standard deviation
(ddof = 1), and a cell with a single seed shows its mean alone. The best mean of a column
(after rounding to the digits shown) is marked as best, the next distinct value as second best.
Missing trials (expected by the spec but without a record: running or not started), failed
trials and cells where the metric does not apply are shown, counted and explained in footnotes;
they are never averaged away.
"""
from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from drainage_bench.analysis.stats import CONFIDENCE, RankSummary, paired_by_seed, rank_summary
from drainage_bench.analysis.store import ResultsStore, list_sweeps
from drainage_bench.catalog import LOSS_DISPLAY, METRIC_ALIASES, METRICS, NOISE_GROUPS, NOISE_ORDER, Metric, get_metric  # noqa: F401
from drainage_bench.config import noise_tag
from drainage_bench.errors import UserError, did_you_mean

DIGITS = 2  # decimals of the percentages shown
FORMATS = ("terminal", "markdown", "latex", "csv", "json")
SUFFIX_FORMATS = {".md": "markdown", ".tex": "latex", ".csv": "csv", ".json": "json", ".txt": "terminal"}
# Record columns that --where may filter on, besides the TrialConfig fields.
WHERE_EXTRA = ("sweep", "trial_id", "loss_display")


@dataclass(frozen=True)
class Column:
    """One noise setting of one dataset: a column of the table."""

    dataset: str
    noise: str
    rate: float
    key: str | None

    @property
    def id(self) -> str:
        return f"{self.dataset}:{noise_tag(self.noise, self.rate, self.key)}"

    @property
    def tag(self) -> str:
        return noise_tag(self.noise, self.rate, self.key)

    @property
    def group(self) -> str:
        return NOISE_GROUPS.get(self.noise, self.noise)

    @property
    def label(self) -> str:
        """The sub-header under the group: 40%, worse_label (empty for clean)."""
        if self.noise == "none":
            return ""
        if self.noise in ("human", "file"):
            return self.key or "default"
        return f"{100 * self.rate:g}%"

    def sort_key(self, dataset_order: list[str]) -> tuple:
        kind = NOISE_ORDER.index(self.noise) if self.noise in NOISE_ORDER else len(NOISE_ORDER)
        return (dataset_order.index(self.dataset), kind, self.noise, self.rate, self.key or "")


@dataclass(frozen=True)
class MetricColumn(Column):
    """One (metric, noise setting) column of a table that shows several metrics side by side."""

    metric: str = ""
    header: str = ""

    @property
    def id(self) -> str:
        return f"{self.metric}|{super().id}"

    @property
    def group(self) -> str:
        return self.header


def _column_of(row) -> Column:
    key = row["noise_key"]
    key = None if key is None or (isinstance(key, float) and math.isnan(key)) else str(key)
    return Column(str(row["dataset"]), str(row["noise"]), float(row["noise_rate"]), key)


# ---------------------------------------------------------------------------------------------
# Selecting the trials


@dataclass
class Selection:
    """The trial records of some sweeps after filtering, and what was expected of them."""

    root: Path
    sweeps: list[str]
    trials: pd.DataFrame                  # records, with `row` (table row) and `column` (Column.id)
    expected: pd.DataFrame | None         # trial_id, row, column, seed of every expected trial
    row_order: list[str]
    columns: dict[str, Column]            # Column.id -> Column, in table order
    metric: str = "final_test_acc"        # the default metric (the first spec's)

    @property
    def ok(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "ok"]

    def _by_sweep(self, trial_ids: Iterable[str] | None):
        frame = self.trials if trial_ids is None else self.trials[self.trials["trial_id"].isin(set(trial_ids))]
        for sweep, group in frame.groupby("sweep", sort=False):
            yield ResultsStore(self.root, sweep), list(group["trial_id"])

    def epochs(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Per-epoch rows of the selected trials (all, or some trial_ids)."""
        parts = [store.epochs(ids) for store, ids in self._by_sweep(trial_ids)]
        parts = [p for p in parts if not p.empty]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def corruptions(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Per (trial, corruption, severity) rows of the selected trials that evaluated corruptions."""
        parts = [store.corruptions(ids) for store, ids in self._by_sweep(trial_ids)]
        parts = [p for p in parts if not p.empty]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def samples(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Per-sample rows (drainage_prob, is_noisy, trial_id) of the selected drainage trials."""
        return self._tagged("samples", trial_ids)

    def openset(self, trial_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Per open-set test sample rows (scores, labels, trial_id) of the selected trials."""
        return self._tagged("openset", trial_ids)

    def _tagged(self, kind: str, trial_ids: Iterable[str] | None) -> pd.DataFrame:
        parts = [store.read_tagged(kind, ids) for store, ids in self._by_sweep(trial_ids)]
        parts = [p for p in parts if not p.empty]
        if len(parts) == 1:
            return parts[0]
        return pd.concat(parts, ignore_index=True).astype({"trial_id": "category"}) if parts else pd.DataFrame()


def resolve_sweeps(root: str | Path, sweeps: list[str] | None) -> list[str]:
    """The sweeps named (each must have results), or the only sweep under `root`."""
    available = list_sweeps(root)
    if not sweeps:
        if len(available) == 1:
            return available
        if not available:
            raise UserError(f"no results under {root}/; run `drainage-bench sweep NAME` or `train` first, "
                            "or point --results at the results folder")
        raise UserError("name the sweep(s) to read; " + did_you_mean("", available))
    for name in sweeps:
        if name not in available:
            raise UserError(f"no results for sweep {name!r} under {root}/; "
                            + did_you_mean(name, available or ["(none)"]))
    return list(dict.fromkeys(sweeps))


def parse_where(items: list[str] | None) -> dict[str, list[str]]:
    """``["dataset=cifar10", "seed=0,1"]`` -> ``{"dataset": ["cifar10"], "seed": ["0", "1"]}``."""
    from drainage_bench.config import FIELDS

    valid = sorted(set(FIELDS) | set(WHERE_EXTRA))
    out: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise UserError(f"--where {item!r} is not key=value (e.g. dataset=cifar10, noise_rate=0.4, seed=0,1)")
        if key not in valid:
            raise UserError(f"--where: unknown key {key!r}; " + did_you_mean(key, valid))
        out.setdefault(key, []).extend(v.strip() for v in value.split(","))
    return out


def _matches(value, wanted: list[str]) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return any(w.lower() in ("none", "null", "") for w in wanted)
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower() in [w.lower() for w in wanted]
    if isinstance(value, (int, float, np.integer, np.floating)):
        for w in wanted:
            try:
                if math.isclose(float(value), float(w), rel_tol=1e-9, abs_tol=1e-12):
                    return True
            except ValueError:
                continue
        return False
    return str(value) in wanted


def apply_where(df: pd.DataFrame, where: dict[str, list[str]]) -> pd.DataFrame:
    """Rows whose every `where` key matches one of its values (AND over keys, OR within one)."""
    for key, wanted in where.items():
        if df.empty:
            break
        if key not in df:
            df = df.iloc[0:0]
            break
        df = df[df[key].map(lambda v, w=wanted: _matches(v, w))]
    return df


def _check_losses(losses: list[str], known: pd.DataFrame) -> None:
    valid = set(known["loss"].astype(str)) | set(known["row"].astype(str))
    lowered = {v.lower() for v in valid}
    for name in losses:
        if name.lower() not in lowered:
            raise UserError(f"--loss {name!r} is not in the selected trials; " + did_you_mean(name, valid))


def apply_losses(df: pd.DataFrame, losses: list[str] | None, known: pd.DataFrame) -> pd.DataFrame:
    """Rows whose loss name or display name is one of `losses` (case-insensitive)."""
    if not losses:
        return df
    _check_losses(losses, known)
    wanted = {name.lower() for name in losses}
    return df[df["loss"].astype(str).str.lower().isin(wanted) | df["row"].astype(str).str.lower().isin(wanted)]


@dataclass
class SpecInfo:
    """What a sweep's spec says about its table: expected trials, row order, default metric.

    It comes from ``<sweep>/expected.parquet``, which `sweep` and `status` write from the spec
    (the analysis layer never expands a spec: that needs the trainer's registries)."""

    expected: pd.DataFrame | None = None
    rows: list[str] = field(default_factory=list)
    metric: str | None = None


def spec_info(store: ResultsStore) -> SpecInfo:
    """The expected trials, row order and metric that the sweep's last run recorded."""
    expected, meta = store.expected()
    if expected is None:
        return SpecInfo()
    expected = expected.assign(sweep=store.sweep)
    return SpecInfo(expected=expected, rows=list(meta.get("rows", [])), metric=meta.get("metric"))


def _with_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Adds `row` (the table row: the display label) and `column` (Column.id)."""
    df = df.copy()
    if "loss_display" not in df:
        df["loss_display"] = None
    df["row"] = df["loss_display"].where(df["loss_display"].notna(), df["loss"]).astype(str)
    df["openset"] = df["openset"].fillna("") if "openset" in df else ""  # open-set splits are replicates
    if not len(df):
        df["column"] = []
        return df
    keys = ["dataset", "noise", "noise_rate", "noise_key"]
    # One Column per distinct setting (thousands of trials share a few settings).
    settings = df[keys].astype(object).drop_duplicates()
    ids = {tuple(_key(v) for v in r): _column_of(dict(zip(keys, r))).id for r in settings.itertuples(index=False)}
    df["column"] = [ids[tuple(_key(v) for v in r)] for r in df[keys].astype(object).itertuples(index=False)]
    return df


def _key(value):
    """A hashable stand-in for a cell value (NaN and None alike)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


# The record columns a table or figure reads (with every TrialConfig field, for --where and the
# one-trial-per-seed check, and the metric columns); the rest of a record is not read.
READ_COLUMNS = ("trial_id", "sweep", "status", "error", "loss_display", "realized_noise_rate")


def read_columns(metric: str | None = None) -> list[str]:
    from drainage_bench.config import FIELDS

    metrics = [get_metric(metric).column] if metric else [m.column for m in METRICS.values()]
    return list(dict.fromkeys([*READ_COLUMNS, *FIELDS, *metrics]))


def pushdown(where: dict[str, list[str]], loss_names: set[str] | None):
    """A pyarrow filter for `where` and the wanted loss names, built per store from its schema.

    It keeps a superset of the rows that `apply_where` / `apply_losses` keep (float values within
    the same tolerance, `none` as null), on TrialConfig fields that are part of the identity only,
    so records of the same trial_id in two sweeps are kept or dropped together; the exact filters
    run on what it keeps."""
    from drainage_bench.config import FIELDS, NOT_HASHED

    pushed = {k: v for k, v in where.items() if (k in FIELDS and k not in NOT_HASHED) or k == "trial_id"}

    def build(schema):
        import pyarrow as pa
        import pyarrow.dataset as ds

        terms = []
        for key, wanted in pushed.items():
            term = _term(ds, pa, schema, key, wanted)
            if term is not None:
                terms.append(term)
        if loss_names is not None and "loss" in schema.names:
            terms.append(ds.field("loss").isin(sorted(loss_names)))
        out = None
        for term in terms:
            out = term if out is None else out & term
        return out

    return build


def _term(ds, pa, schema, key: str, wanted: list[str]):
    none = any(w.lower() in ("none", "null", "") for w in wanted)
    if key not in schema.names:
        return None if none else ds.scalar(False)
    kind, col = schema.field(key).type, ds.field(key)
    numbers = []
    for w in wanted:
        try:
            numbers.append(float(w))
        except ValueError:
            pass
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        term = col.isin([w for w in wanted])
    elif pa.types.is_integer(kind):
        term = col.isin([int(x) for x in numbers if math.isfinite(x) and x.is_integer()])
    elif pa.types.is_floating(kind):
        term = ds.scalar(False)
        for x in numbers:  # math.isclose(rel_tol=1e-9, abs_tol=1e-12), widened a little
            tol = 2e-9 * abs(x) + 2e-12
            term = term | ((col >= x - tol) & (col <= x + tol))
    else:
        return None  # booleans, nulls: filtered exactly afterwards
    return term | col.is_null() if none else term


def load_selection(root: str | Path, sweeps: list[str] | None = None, where: list[str] | None = None,
                   losses: list[str] | None = None, metric: str | None = None) -> Selection:
    """The filtered records of `sweeps` under `root`, plus the expected trials their runs recorded.

    Filters are pushed down into the read (only matching rows, only the columns a table needs;
    `metric` narrows the metric columns to one), then applied exactly."""
    root = Path(root)
    names = resolve_sweeps(root, sweeps)
    filters = parse_where(where)
    stores = [ResultsStore(root, name) for name in names]
    infos = [spec_info(store) for store in stores]
    expected = [i.expected for i in infos if i.expected is not None]
    exp = _with_cells(pd.concat(expected, ignore_index=True)) if expected else None
    loss_names = None
    known = None
    if losses:
        pairs = [store.trials(columns=["loss", "loss_display"]) for store in stores]
        pairs = pd.concat([p for p in pairs if not p.empty] or [pd.DataFrame(columns=["loss"])], ignore_index=True)
        display = pairs["loss_display"] if "loss_display" in pairs else pd.Series(None, index=pairs.index)
        known = pd.DataFrame({"loss": pairs["loss"], "row": display.where(display.notna(), pairs["loss"]).astype(str)})
        if exp is not None:
            known = pd.concat([known, exp[["loss", "row"]]], ignore_index=True)
        _check_losses(losses, known)
        wanted = {n.lower() for n in losses}
        loss_names = {str(lo) for lo, row in zip(known["loss"], known["row"])
                      if str(lo).lower() in wanted or str(row).lower() in wanted}
    columns = read_columns(metric)
    frames = [store.trials(columns=columns, filter_for=pushdown(filters, loss_names)) for store in stores]
    frames = [f for f in frames if not f.empty]
    trials = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["trial_id", "sweep", "status", "loss", "loss_display", "dataset", "noise", "noise_rate",
                 "noise_key", "seed"])
    trials = _with_cells(_dedupe(trials))
    if known is None:
        known = trials[["loss", "row"]] if exp is None else pd.concat([trials[["loss", "row"]], exp[["loss", "row"]]])
    trials = apply_losses(apply_where(trials, filters), losses, known)
    if exp is not None:
        exp = apply_losses(apply_where(exp, filters), losses, known)
    if trials.empty and (exp is None or exp.empty):
        raise UserError("no trials match the filters (--where / --loss); drop a filter or check the values")
    _check_one_trial_per_seed(trials)
    both = trials if exp is None else pd.concat([trials, exp], ignore_index=True)
    present = set(both["row"])
    row_order = [r for i in infos for r in i.rows]
    seen = list(dict.fromkeys(row_order + _registry_order(both)))
    metrics = [i.metric for i in infos if i.metric]
    return Selection(root=root, sweeps=names, trials=trials.reset_index(drop=True), expected=exp,
                     row_order=[r for r in seen if r in present],
                     columns=_columns(both),
                     metric=metrics[0] if metrics else "final_test_acc")


def _registry_order(frame: pd.DataFrame) -> list[str]:
    """Rows no spec orders: in the order of the loss registry (CE first, the drainage loss last;
    catalog.LOSS_DISPLAY), rows of one loss by name."""
    rank = {name: i for i, name in enumerate(LOSS_DISPLAY)}
    pairs = frame[["loss", "row"]].drop_duplicates().astype(str)
    return [row for _, row in sorted(zip(pairs["loss"], pairs["row"]), key=lambda p: (rank.get(p[0], len(rank)), p[1]))]


def _dedupe(trials: pd.DataFrame) -> pd.DataFrame:
    """One record per trial_id (the same trial in two sweeps): an ok record wins over a failed one."""
    order = trials["status"].ne("ok").astype(int)
    return trials.assign(_o=order).sort_values("_o", kind="stable").drop_duplicates("trial_id").drop(columns="_o")


def _check_one_trial_per_seed(trials: pd.DataFrame) -> None:
    """Two different trials in the same cell with the same seed would be averaged as if they were
    seeds of one experiment: refuse, and name what differs."""
    from drainage_bench.config import NOT_HASHED, FIELDS

    keys = ["row", "column", "seed", "openset"]
    for (row, column, seed, _), group in trials[trials.duplicated(keys, keep=False)].groupby(keys, sort=False):
        fields = [f for f in FIELDS if f in group and f not in NOT_HASHED]
        differ = [f for f in fields if group[f].astype(str).nunique() > 1]
        raise UserError(f"{row} / {column} / seed {seed} has {len(group)} different trials "
                        f"({', '.join(group['trial_id'])}) differing in {', '.join(differ) or 'their id'}; "
                        "choose one with --where (e.g. --where " + (f"{differ[0]}=...)" if differ else "sweep=...)")
                        + " or give the losses distinct labels in the spec")


def _columns(df: pd.DataFrame) -> dict[str, Column]:
    datasets = list(dict.fromkeys(df["dataset"].astype(str)))
    cols = {c.id: c for c in (_column_of(r) for _, r in df.drop_duplicates("column").iterrows())}
    return dict(sorted(cols.items(), key=lambda kv: kv[1].sort_key(datasets)))


# ---------------------------------------------------------------------------------------------
# Aggregating


@dataclass
class TableData:
    """Everything a formatter needs. `cells` is indexed by (row, column) with the columns
    mean, std (fractions; std NaN for n < 2), n (seeds with a value), n_failed, n_missing,
    n_na (finished trials where the metric does not apply), n_expected, rank (1 best, 2 second, 0)."""

    metric: Metric
    cells: pd.DataFrame
    rows: list[str]
    columns: list[Column]
    realized: dict[str, float]             # Column.id -> mean realized noise rate (fraction)
    sweeps: list[str]
    n_ref: int                             # the usual number of seeds per cell
    failures: list[str]
    missing_total: int
    expected_known: bool                   # every sweep's spec listed its trials: missing ones are counted
    failed_total: int
    dropped_rows: list[str]
    notes: list[str]
    compare_to: str | None = None          # add_comparison: the reference row of the Δ columns
    ranks: RankSummary | None = None       # add_ranks: mean ranks, Friedman, Nemenyi CD
    replicates: str = "seeds"              # what a cell averages over: seeds, or open-set splits x seeds

    def cell(self, row: str, column: str) -> pd.Series:
        return self.cells.loc[(row, column)]


def aggregate(selection: Selection, metric: str | Metric | None = None) -> TableData:
    """Mean, std (ddof=1) and n per (row, column) of `metric` (default: the spec's), ranks per column."""
    metric = metric if isinstance(metric, Metric) else get_metric(metric or selection.metric)
    trials = selection.trials
    values = metric_values(selection, metric)
    keys = ["row", "column"]
    grid = pd.MultiIndex.from_product([selection.row_order, list(selection.columns)], names=keys)
    stats = values.groupby(keys)["value"].agg(mean="mean", std="std", n="count")  # pandas' std: ddof = 1
    cells = stats.reindex(grid)
    cells["n"] = cells["n"].fillna(0).astype(int)
    cells["n_na"] = values[values["value"].isna()].groupby(keys).size().reindex(grid, fill_value=0)
    cells["n_failed"] = trials[trials["status"] != "ok"].groupby(keys).size().reindex(grid, fill_value=0)
    exp = selection.expected
    if exp is not None and not exp.empty:
        # An expected trial is there when its cell has a record with its seed; matching on
        # (row, column, seed) rather than trial_id keeps a sweep run with --set overrides whole.
        recorded = set(zip(trials["row"], trials["column"], trials["seed"].astype(int), trials["openset"]))
        missing = exp[[key not in recorded
                       for key in zip(exp["row"], exp["column"], exp["seed"].astype(int), exp["openset"])]]
        cells["n_missing"] = missing.groupby(keys).size().reindex(grid, fill_value=0)
        cells["n_expected"] = exp.groupby(keys).size().reindex(grid, fill_value=0)
    else:
        cells["n_missing"] = 0
        cells["n_expected"] = np.nan
    cells.loc[cells["n"] < 2, "std"] = np.nan
    # Rows where the metric applies nowhere (drainage shares of a CE row) are left out.
    applies = cells.groupby(level="row").apply(lambda g: bool((g["n"] > 0).any() or (g["n_na"] == 0).all()))
    dropped = [r for r in selection.row_order if not applies.get(r, True)]
    rows = [r for r in selection.row_order if r not in dropped]
    if not rows:
        where = ("the selected records predate it (an older version wrote them)" if metric.applies == "every trial"
                 else f"it exists for {metric.applies} only")
        raise UserError(f"metric {metric.name} does not apply to any selected trial: {where}; "
                        "choose another --metric or other trials")
    cells = cells.loc[rows]
    cells["rank"] = _ranks(cells, metric.higher_is_better, scale(metric))
    counts = Counter(cells.loc[cells["n"] > 0, "n"])
    n_ref = max(counts, key=lambda n: (counts[n], n)) if counts else 0
    realized = trials.groupby("column")["realized_noise_rate"].mean() if "realized_noise_rate" in trials else {}
    return TableData(
        metric=metric, cells=cells, rows=rows, columns=list(selection.columns.values()),
        realized={c: float(realized.get(c, np.nan)) for c in selection.columns}, sweeps=list(selection.sweeps),
        n_ref=n_ref, failures=_failures(trials), missing_total=int(cells["n_missing"].sum()),
        expected_known=exp is not None and set(selection.sweeps) <= set(exp["sweep"]),
        failed_total=int((trials["status"] != "ok").sum()), dropped_rows=dropped, notes=[],
        replicates="runs (open-set splits × seeds)" if trials["openset"].nunique() > 1 else "seeds")


def aggregate_metrics(selection: Selection, metrics: list[str] | None = None) -> TableData:
    """One table of several metrics side by side: a column per (metric, noise setting), each
    aggregated and ranked as `aggregate` does for that metric alone (its own direction); a row
    that a metric does not apply to shows n/a there. One metric (or none) is `aggregate`."""
    if not metrics or len(metrics) == 1:
        return aggregate(selection, metrics[0] if metrics else None)
    parts = [aggregate(selection, name) for name in dict.fromkeys(metrics)]
    rows = [r for r in selection.row_order if any(r in d.rows for d in parts)]
    frames, columns, realized = [], [], {}
    for d in parts:
        m = d.metric
        renamed = {c.id: MetricColumn(c.dataset, c.noise, c.rate, c.key, m.name, m.short or m.title) for c in d.columns}
        cells = d.cells.rename(index={old: new.id for old, new in renamed.items()}, level="column")
        grid = pd.MultiIndex.from_product([rows, [c.id for c in renamed.values()]], names=["row", "column"])
        cells = cells.reindex(grid)
        absent = cells["n"].isna()  # a row the metric does not apply to
        cells.loc[absent, ["n", "n_failed", "n_missing", "rank"]] = 0
        cells.loc[absent, "n_na"] = 1
        frames.append(cells.astype({k: int for k in ("n", "n_na", "n_failed", "n_missing", "rank")}))
        columns += list(renamed.values())
        realized.update({new.id: d.realized.get(old, np.nan) for old, new in renamed.items()})
    lower = [d.metric.name for d in parts if not d.metric.higher_is_better]
    notes = list(parts[0].notes) + ([f"Lower is better in the columns of {', '.join(lower)}: their best is the "
                                     "lowest mean."] if lower else [])
    notes += [f"{d.metric.short or d.metric.name}: {d.metric.title} ({d.metric.name})." for d in parts]
    title = ", ".join(d.metric.short or d.metric.name for d in parts)
    first = parts[0]
    return TableData(
        metric=Metric("+".join(d.metric.name for d in parts), "", title), cells=pd.concat(frames), rows=rows,
        columns=columns, realized=realized, sweeps=first.sweeps, n_ref=first.n_ref, failures=first.failures,
        missing_total=first.missing_total, expected_known=first.expected_known, failed_total=first.failed_total,
        dropped_rows=[], notes=notes, replicates=first.replicates)


def scale(metric: Metric) -> float:
    """100 for a fraction shown in percent, 1 for a metric that is not one (NLL)."""
    return 100.0 if metric.percent else 1.0


def column_scale(data: "TableData", column: Column) -> float:
    """`scale` of the metric a column shows (its own in a table of several metrics)."""
    name = getattr(column, "metric", "")
    return scale(METRICS[name]) if name in METRICS else scale(data.metric)


def _ranks(cells: pd.DataFrame, higher_is_better: bool, factor: float = 100.0) -> pd.Series:
    """1 for the best mean of each column, 2 for the next distinct one, 0 otherwise; means are
    compared as shown (rounded), so cells that look tied are ranked alike. A column with fewer
    than two rows with a value ranks nothing."""
    rank = pd.Series(0, index=cells.index, dtype=int)
    shown = (factor * cells["mean"]).round(DIGITS)
    for column, values in shown.groupby(level="column"):
        values = values.dropna()
        if len(values) < 2:
            continue
        distinct = sorted(set(values), reverse=higher_is_better)
        rank[values.index[values == distinct[0]]] = 1
        if len(distinct) > 1:
            rank[values.index[values == distinct[1]]] = 2
    return rank


def _failures(trials: pd.DataFrame, limit: int = 5) -> list[str]:
    failed = trials[trials["status"] != "ok"]
    lines = [f"{r['row']} {r['column']} seed {r['seed']}: {str(r.get('error') or 'no error recorded').splitlines()[0][:120]}"
             for _, r in failed.head(limit).iterrows()]
    if len(failed) > limit:
        lines.append(f"... and {len(failed) - limit} more")
    return lines


# ---------------------------------------------------------------------------------------------
# Cell text and footnotes, shared by the formatters


def _num(x: float, factor: float = 100.0) -> str:
    return f"{factor * x:.{DIGITS}f}"


def cell_text(cell: pd.Series, factor: float = 100.0) -> str:
    """``85.12 ± 0.31``; ``85.12`` for one seed; ``—`` with no finished trial; ``n/a``.
    `factor` is `scale(metric)`: percent, or the value itself (NLL)."""
    if cell["n"] == 0:
        return "n/a" if cell["n_na"] > 0 and cell["n_failed"] == 0 and cell["n_missing"] == 0 else "—"
    return (_num(cell["mean"], factor) if cell["n"] < 2
            else f"{_num(cell['mean'], factor)} ± {_num(cell['std'], factor)}")


def seed_note(cell: pd.Series, n_ref: int) -> str:
    """``n=2`` where the number of seeds is not the usual one, or some are missing, failed or n/a."""
    if cell["n"] > 0 and (cell["n"] != n_ref or cell["n_failed"] + cell["n_missing"] + cell["n_na"] > 0):
        return f"n={int(cell['n'])}"
    return ""


def caption(data: TableData) -> str:
    seeds = f"{data.n_ref} seed{'s' if data.n_ref != 1 else ''}" if data.replicates == "seeds" else \
        f"{data.n_ref} {data.replicates}"
    return (f"{data.metric.title}{' (%)' if data.metric.percent else ''}, mean ± std over {seeds}"
            f" — {', '.join(data.sweeps)}")


def footnotes(data: TableData, best: str, second: str) -> list[str]:
    """The footnotes of every format; `best` / `second` say how those cells are marked."""
    direction = "highest" if data.metric.higher_is_better else "lowest"
    unit = "in percent" if data.metric.percent else "as values (not percent)"
    other_n = f"whose number of seeds is not {data.n_ref} or " if data.n_ref > 0 else ""
    notes = [f"Cells: mean ± sample standard deviation (ddof = 1) over {data.replicates}, {unit}; one seed shows the mean "
             f"alone; n=k marks a cell {other_n}that has missing/failed seeds.",
             f"{best}: {direction} mean of the column; {second}: second {direction} (compared as shown)."]
    cells = data.cells
    if data.missing_total or data.failed_total or ((cells["n"] == 0) & (cells["n_na"] == 0)).any():
        unrun = f"; trials without a record (running or not started): {data.missing_total}" if data.expected_known else ""
        notes.append(f"—: no finished trial in the cell. Failed trials: {data.failed_total}{unrun}.")
    if not data.expected_known:  # a cell that lost a seed cannot be told from one that never had it
        notes.append("Trials not run yet are not counted: no trial list is recorded for this sweep "
                     "(`drainage-bench status SPEC` records it).")
    notes += [f"failed: {line}" for line in data.failures]
    if (cells["n_na"] > 0).any():
        notes.append("n/a: the metric does not apply to these trials.")
    if data.metric.note:
        notes.append(data.metric.note)
    if data.dropped_rows:
        notes.append(f"Rows without this metric are left out: {', '.join(data.dropped_rows)}.")
    if any(not math.isnan(v) for v in data.realized.values()):
        notes.append("Realized noise: the share of training labels actually changed, mean over the column's trials.")
    return notes + comparison_notes(data) + data.notes


def _groups(columns: list[Column], datasets: int) -> list[tuple[str, int]]:
    """Consecutive (group header, span) pairs; the dataset is named when there are several."""
    out: list[tuple[str, int]] = []
    for c in columns:
        name = f"{c.dataset} · {c.group}" if datasets > 1 else c.group
        if out and out[-1][0] == name:
            out[-1] = (name, out[-1][1] + 1)
        else:
            out.append((name, 1))
    return out


def _realized_text(data: TableData, column: Column) -> str:
    value = data.realized.get(column.id, math.nan)
    return "—" if value is None or math.isnan(value) else _num(value)


# ---------------------------------------------------------------------------------------------
# Formatters: each reads a TableData and returns text


def format_table(data: TableData, fmt: str = "terminal", *, styled: bool = False, width: int = 200,
                 standalone: bool = False) -> str:
    if fmt not in FORMATTERS:
        raise UserError(f"unknown format {fmt!r}; " + did_you_mean(fmt, FORMATTERS))
    if fmt == "terminal":
        return format_terminal(data, styled=styled, width=width)
    if fmt == "latex":
        return format_latex(data, standalone=standalone)
    return FORMATTERS[fmt](data)


def _headers(data: TableData) -> list[str]:
    datasets = len({c.dataset for c in data.columns})
    return [f"{c.dataset} " * (datasets > 1) + (f"{c.group} {c.label}".strip()) for c in data.columns]


def format_terminal(data: TableData, styled: bool = False, width: int = 200) -> str:
    """An aligned rich table. Styled: best bold, second underlined; plain: suffixes * and †."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    datasets = len({c.dataset for c in data.columns})
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("Loss")
    shown_group = None
    for c in data.columns:
        group = f"{c.dataset} · {c.group}" if datasets > 1 else c.group
        head = (group if group != shown_group else "") + "\n" + c.label
        shown_group = group
        table.add_column(head, justify="right")
    for row in data.rows:
        texts = []
        for c in data.columns:
            cell = data.cell(row, c.id)
            text = cell_text(cell, column_scale(data, c))
            note = seed_note(cell, data.n_ref)
            style = {1: "bold", 2: "underline"}.get(cell["rank"], "") if styled else ""
            mark = "" if styled else {1: "*", 2: "†"}.get(cell["rank"], "")
            texts.append(Text.assemble((text + mark, style), (f" ({note})" if note else "", "dim"),
                                       comparison_text(data, row, cell)))
        table.add_row(row, *texts)
    table.add_section()
    table.add_row(Text("Realized noise", style="italic"), *[_realized_text(data, c) for c in data.columns])
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=styled, color_system="standard" if styled else None,
                      highlight=False)
    console.print(Text(caption(data), style="bold"))
    console.print(table)
    marks = ("bold", "underlined") if styled else ("*", "†")
    for note in footnotes(data, *marks):
        console.print(Text(note, style="dim"))
    for i, line in enumerate(rank_lines(data)):
        console.print(Text(line, style="bold" if i == 0 else ""))
    return buffer.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def format_markdown(data: TableData) -> str:
    """A GitHub-flavoured markdown table; best **bold**, second *italic*."""
    lines = [f"**{_md_escape(caption(data))}**", ""]
    lines.append("| Loss | " + " | ".join(_md_escape(h) for h in _headers(data)) + " |")
    lines.append("|:--|" + "--:|" * len(data.columns))
    for row in data.rows:
        cells = []
        for c in data.columns:
            cell = data.cell(row, c.id)
            text = cell_text(cell, column_scale(data, c))
            text = {1: f"**{text}**", 2: f"*{text}*"}.get(cell["rank"], text)
            note = seed_note(cell, data.n_ref)
            cells.append(text + (f" <sub>{note}</sub>" if note else "") + _md_escape(comparison_text(data, row, cell)))
        lines.append(f"| {_md_escape(row)} | " + " | ".join(cells) + " |")
    lines.append("| *Realized noise* | " + " | ".join(_realized_text(data, c) for c in data.columns) + " |")
    lines.append("")
    lines += [f"<sub>{_md_escape(n)}</sub><br>" for n in footnotes(data, "bold", "italic")]
    ranks = rank_lines(data)
    lines += ["", f"**{_md_escape(ranks[0])}**", ""] + [f"{_md_escape(n)}<br>" for n in ranks[1:]] if ranks else []
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "±": r"$\pm$", "—": "---", "·": r"$\cdot$", "†": r"$^\dagger$",
                 "‡": r"$^\ddagger$", "Δ": r"$\Delta$", "š": r"\v{s}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def format_latex(data: TableData, standalone: bool = False) -> str:
    """A booktabs table (``\\usepackage{booktabs}``); best \\textbf, second \\underline.

    With `standalone`, a complete article document that pdflatex compiles as is."""
    datasets = len({c.dataset for c in data.columns})
    groups = _groups(data.columns, datasets)
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\caption{" + latex_escape(caption(data)) + "}",
           r"\begin{tabular}{l" + "r" * len(data.columns) + "}", r"\toprule"]
    head, rules, start = ["Loss"], [], 2
    for name, span in groups:
        head.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(name)}}}" if span > 1 else latex_escape(name))
        if any(c.label for c in data.columns[start - 2:start - 2 + span]):
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    labelled = any(c.label for c in data.columns)
    head[0] = "" if labelled else "Loss"
    out.append(" & ".join(head) + r" \\")
    if labelled:
        out.append(" ".join(rules))
        out.append(" & ".join(["Loss"] + [latex_escape(c.label) for c in data.columns]) + r" \\")
    out.append(r"\midrule")
    for row in data.rows:
        cells = [latex_escape(row)]
        for c in data.columns:
            cell = data.cell(row, c.id)
            text = latex_escape(cell_text(cell, column_scale(data, c)))
            text = {1: rf"\textbf{{{text}}}", 2: rf"\underline{{{text}}}"}.get(cell["rank"], text)
            note = seed_note(cell, data.n_ref)
            cells.append(text + (rf"\textsuperscript{{{note}}}" if note else "")
                         + latex_escape(comparison_text(data, row, cell)))
        out.append(" & ".join(cells) + r" \\")
    out.append(r"\midrule")
    out.append(" & ".join([r"\textit{Realized noise}"] + [latex_escape(_realized_text(data, c))
                                                         for c in data.columns]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", "", r"\smallskip", r"\footnotesize"]
    out += [latex_escape(n) + r"\par" for n in footnotes(data, r"Bold", r"underlined")]
    out += [latex_escape(n) + r"\par" for n in rank_lines(data)]
    out.append(r"\end{table}")
    body = "\n".join(out) + "\n"
    if not standalone:
        return "% drainage-bench table; needs \\usepackage{booktabs}\n" + body
    return ("\\documentclass{article}\n\\usepackage{booktabs}\n"
            "\\usepackage[margin=1.5cm,landscape]{geometry}\n\\begin{document}\n" + body + "\\end{document}\n")


def tidy(data: TableData) -> pd.DataFrame:
    """One row per (loss, column), numbers in percent: what csv and json write."""
    records = []
    for row in data.rows:
        for c in data.columns:
            cell = data.cell(row, c.id)
            records.append({
                "loss": row, "dataset": c.dataset, "noise": c.noise, "noise_rate": c.rate, "noise_key": c.key,
                "column": c.id, "metric": getattr(c, "metric", "") or data.metric.name,
                "mean_pct": column_scale(data, c) * cell["mean"], "std_pct": column_scale(data, c) * cell["std"],
                "n": int(cell["n"]),
                "n_failed": int(cell["n_failed"]), "n_missing": int(cell["n_missing"]), "n_na": int(cell["n_na"]),
                "rank": int(cell["rank"]), "realized_noise_pct": 100 * data.realized.get(c.id, math.nan),
                **statistics_fields(data, row, cell)})
    return pd.DataFrame(records)


def format_csv(data: TableData) -> str:
    """Long format, one line per (loss, column); rank 1 = best, 2 = second best."""
    return tidy(data).to_csv(index=False)


def format_json(data: TableData) -> str:
    frame = tidy(data).astype(object)
    cells = frame.where(frame.notna(), None).to_dict(orient="records")
    doc = {"caption": caption(data), "metric": data.metric.name, "sweeps": data.sweeps, "rows": data.rows,
           "columns": [{"id": c.id, "group": c.group, "label": c.label} for c in data.columns],
           "cells": cells, "missing": data.missing_total, "failed": data.failed_total,
           "footnotes": footnotes(data, "rank 1", "rank 2"), **rank_json(data)}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


FORMATTERS = {"terminal": format_terminal, "markdown": format_markdown, "latex": format_latex,
              "csv": format_csv, "json": format_json}


def format_for(output: str | Path | None, fmt: str | None) -> str:
    """The format asked for, else the one the output file's suffix names, else terminal."""
    if fmt is not None:
        if fmt not in FORMATTERS:
            raise UserError(f"unknown format {fmt!r}; " + did_you_mean(fmt, FORMATTERS))
        return fmt
    return SUFFIX_FORMATS.get(Path(output).suffix.lower(), "terminal") if output else "terminal"


# ---------------------------------------------------------------------------------------------
# Paired comparisons (table --compare-to ROW) and the rank summary (table --ranks); the
# statistics themselves are in stats.py

SIGNIFICANT = "‡"  # marks a difference whose confidence interval excludes 0


def metric_values(selection: Selection, metric: Metric) -> pd.DataFrame:
    """The ok trials with `value`: the metric's column as numbers (NaN where it does not apply)."""
    ok = selection.ok
    return ok.assign(value=pd.to_numeric(ok.get(metric.column), errors="coerce") if metric.column in ok else np.nan)


def resolve_row(data: TableData, selection: Selection, name: str) -> str:
    """A table row by its name or its loss's name (case-insensitive)."""
    rows = {r.lower(): r for r in data.rows}
    if name.lower() in rows:
        return rows[name.lower()]
    by_loss = set(selection.trials.loc[selection.trials["loss"].astype(str).str.lower() == name.lower(), "row"])
    by_loss &= set(data.rows)
    if len(by_loss) == 1:
        return by_loss.pop()
    raise UserError(f"--compare-to {name!r} is not a row of the table"
                    + (f" (loss {name} has several rows: {', '.join(sorted(by_loss))})" if by_loss else "")
                    + "; " + did_you_mean(name, data.rows))


def add_comparison(data: TableData, selection: Selection, reference: str,
                   confidence: float = CONFIDENCE) -> TableData:
    """Per cell, the mean difference to row `reference` over the seeds both have in that column,
    with its paired-t confidence interval (stats.paired_difference): cells get ``diff``,
    ``diff_low``, ``diff_high`` (fractions), ``n_pairs`` and ``diff_excludes_zero``."""
    reference = resolve_row(data, selection, reference)
    values = metric_values(selection, data.metric)
    if "openset" in values:  # open-set splits are replicates too: pair by (split, seed)
        values = values.assign(seed=values["openset"].astype(str) + "|" + values["seed"].astype(str))
    groups = {key: g[["seed", "value"]] for key, g in values.groupby(["row", "column"])}
    empty = pd.DataFrame({"seed": [], "value": []})
    found = {}
    for row, column in data.cells.index:
        d = paired_by_seed(groups.get((row, column), empty), groups.get((reference, column), empty), confidence)
        found[(row, column)] = (d.mean, d.low, d.high, d.n, d.excludes_zero)
    columns = ["diff", "diff_low", "diff_high", "n_pairs", "diff_excludes_zero"]
    extra = pd.DataFrame.from_dict(found, orient="index", columns=columns)
    extra.index = pd.MultiIndex.from_tuples(extra.index, names=data.cells.index.names)
    data.cells = data.cells.join(extra)
    data.compare_to = reference
    return data


def _signed(x: float, factor: float = 100.0) -> str:
    return f"{factor * x:+.{DIGITS}f}"


def comparison_text(data: TableData, row: str, cell: pd.Series) -> str:
    """`` Δ -5.65 [-8.13, -3.17]‡`` after a cell (empty without --compare-to)."""
    if data.compare_to is None:
        return ""
    if row == data.compare_to:
        return " (reference)"
    n = int(cell["n_pairs"])
    if n == 0:
        return "" if cell["n"] == 0 else " Δ —"
    f = scale(data.metric)  # percentage points, or units of a metric that is not a fraction (NLL)
    if n == 1:
        return f" Δ {_signed(cell['diff'], f)} (1 pair)"
    mark = SIGNIFICANT if cell["diff_excludes_zero"] else ""
    return f" Δ {_signed(cell['diff'], f)} [{_signed(cell['diff_low'], f)}, {_signed(cell['diff_high'], f)}]{mark}"


def comparison_notes(data: TableData) -> list[str]:
    if data.compare_to is None:
        return []
    cells = data.cells.drop(index=data.compare_to, level="row")
    pairs = sorted({int(n) for n in cells["n_pairs"] if n > 0})
    how = ("no cell has a seed in common with it" if not pairs else
           f"{pairs[0]} pair{'s' * (pairs[0] != 1)} per cell" if len(pairs) == 1 else
           f"{pairs[0]} to {pairs[-1]} pairs per cell")
    unit = "percentage points" if data.metric.percent else "units of the metric"
    return [f"Δ: mean difference to {data.compare_to} over the seeds both share, paired by seed within the column "
            f"(same seed: same noisy labels), in {unit}, with its {100 * CONFIDENCE:g}% confidence interval from the "
            f"paired t test (mean ± t(0.975, n-1) sd / sqrt(n) over n pairs); {SIGNIFICANT}: the interval excludes 0. "
            f"{how[0].upper() + how[1:]}; a cell with one pair has no interval."]


def add_ranks(data: TableData) -> TableData:
    """The rank summary of the table's cell means (stats.rank_summary): losses ranked within
    each column, the Friedman test over the columns as blocks, the Nemenyi critical difference."""
    matrix = data.cells["mean"].unstack("column").reindex(index=data.rows, columns=[c.id for c in data.columns])
    data.ranks = rank_summary(matrix, data.metric.higher_is_better)
    return data


def rank_lines(data: TableData) -> list[str]:
    """The rank summary as lines (a title first); empty without --ranks."""
    s = data.ranks
    if s is None:
        return []
    headers = dict(zip([c.id for c in data.columns], _headers(data)))
    lines = [f"Rank summary over {s.n} column{'s' * (s.n != 1)} ({data.metric.title})"]
    if s.n == 0:
        return lines + ["No column has a value for every loss: nothing to rank."]
    order = s.mean_ranks.sort_values(kind="stable")
    lines.append("Mean rank (1 = best, ties share their average rank): "
                 + ", ".join(f"{row} {rank:.2f}" for row, rank in order.items()) + ".")
    if math.isnan(s.statistic):
        lines.append("Friedman test: needs at least 3 losses and 2 columns.")
    else:
        lines.append(f"Friedman test (columns as blocks, tie-corrected): chi-square = {s.statistic:.2f}, {s.k - 1} df, "
                     f"p = {s.pvalue:.3g} (k = {s.k} losses, N = {s.n} columns).")
    if not math.isnan(s.cd):
        cliques = s.cliques()
        lines.append(f"Nemenyi critical difference (alpha = {s.alpha:g}, Demšar 2006): CD = {s.cd:.2f}; losses whose "
                     "mean ranks differ by less are not significantly different"
                     + (": " + "; ".join("{" + ", ".join(g) + "}" for g in cliques) if cliques else "") + ".")
    if s.dropped:
        lines.append("Left out (a loss has no value there): " + ", ".join(headers.get(c, c) for c in s.dropped) + ".")
    return lines


def statistics_fields(data: TableData, row: str, cell: pd.Series) -> dict:
    """The comparison and rank columns of csv / json (none without --compare-to / --ranks)."""
    out = {}
    if data.compare_to is not None:
        f = scale(data.metric)  # percentage points, or units of a metric such as NLL (as mean_pct)
        out.update(compare_to=data.compare_to, diff_pct=f * cell["diff"], diff_low_pct=f * cell["diff_low"],
                   diff_high_pct=f * cell["diff_high"], n_pairs=int(cell["n_pairs"]),
                   diff_excludes_zero=bool(cell["diff_excludes_zero"]))
    if data.ranks is not None:
        out["mean_rank"] = float(data.ranks.mean_ranks.get(row, math.nan))
    return out


def rank_json(data: TableData) -> dict:
    s = data.ranks
    if s is None:
        return {}
    finite = lambda x: None if x is None or math.isnan(x) else float(x)  # noqa: E731
    return {"ranks": {"mean_ranks": {k: finite(v) for k, v in s.mean_ranks.items()}, "k": s.k, "n": s.n,
                      "friedman_chi2": finite(s.statistic), "friedman_p": finite(s.pvalue),
                      "nemenyi_cd": finite(s.cd), "alpha": s.alpha, "columns": s.blocks, "dropped": s.dropped,
                      "cliques": s.cliques() if not math.isnan(s.cd) else []}}

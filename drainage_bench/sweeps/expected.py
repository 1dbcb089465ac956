"""The trial list of a sweep, recorded in its results folder (``<sweep>/expected.parquet``).

Expanding a spec builds and validates TrialConfigs, which imports the trainer's registries
(torch); `table` and `status` should not pay for that on every call. So `sweep` and `status`
record the expansion once: one row per trial (trial_id, every field, loss_display) and, as file
metadata, what the table needs of the spec (row order, default metric) and the SHA-256 of the
spec file it came from. `status` reuses the list while the spec file is unchanged (and has no
``params = "tuned"`` entry, whose values follow the Optuna study); the table counts missing
trials from it. A store without the file still works: the table then says it cannot count the
trials not run yet, and `status` expands the spec and writes the file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from drainage_bench.analysis.store import ResultsStore
from drainage_bench.catalog import LOSS_DISPLAY
from drainage_bench.config import TrialConfig
from drainage_bench.sweeps.spec import SweepSpec


def spec_sha256(spec: SweepSpec) -> str:
    path = Path(spec.source)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def table_rows(spec: SweepSpec) -> list[str]:
    """The table's rows in the spec's order: each loss entry's label, else the loss's table name."""
    return [entry.label or LOSS_DISPLAY.get(entry.name, entry.name) for entry in spec.losses]


def expected_frame(configs: list[TrialConfig], sweep: str) -> pd.DataFrame:
    """One row per distinct trial (the first config of a trial_id wins, as in `plan`)."""
    rows = {}
    for c in configs:
        if c.trial_id not in rows:
            values = c.to_dict()
            values["loss_params"] = json.dumps(values["loss_params"], sort_keys=True)
            rows[c.trial_id] = {"trial_id": c.trial_id, "sweep": sweep, **values,
                                "loss_display": c.label or LOSS_DISPLAY.get(c.loss, c.loss)}
    return pd.DataFrame(list(rows.values()))


def record_expected(store: ResultsStore, spec: SweepSpec, configs: list[TrialConfig]) -> pd.DataFrame:
    """Write the sweep's trial list into its results folder; return it."""
    frame = expected_frame(configs, store.sweep)
    meta = {"rows": table_rows(spec), "metric": spec.metric, "spec_sha256": spec_sha256(spec),
            "tuned": any(entry.params == "tuned" for entry in spec.losses)}
    store.write_expected(frame, meta)
    return frame


def recorded_expected(store: ResultsStore, spec: SweepSpec) -> pd.DataFrame | None:
    """The recorded trial list if it still describes `spec` (same file, nothing tuned), else None."""
    frame, meta = store.expected()
    if frame is None or meta.get("tuned", True) or meta.get("spec_sha256") != spec_sha256(spec):
        return None
    return frame

"""`drainage-bench reproduce SWEEP TRIAL_ID`: train a recorded trial again, compare every metric.

The TrialConfig is rebuilt from the record's fields (`config_from_record`; it must hash to the
recorded trial_id), and runs under the recorded conditions: the torch thread count
(``torch_threads``, else the trial's ``cpus_per_trial``), the device (``device_used``), the
precision (``precision``: with ``amp=true`` a CPU without bf16 instructions recorded fp32) and the
deterministic switch (a config field). Besides every metric, it compares the labels trained on
(``noise_hash``) and the per-sample records (`PARTS`: drainage probabilities, open-set scores,
corruption cells) with the new run's. Nothing is written: the stored record stays as it is.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drainage_bench.config import FIELDS, TrialConfig
from drainage_bench.errors import UserError, did_you_mean
from drainage_bench.trainer.provenance import LIBRARIES

# Per-epoch columns that are timings, not results.
TIMINGS = ("train_seconds", "epoch_seconds")
# Run conditions besides the thread count, the device and the precision (which `reproduce` sets as
# recorded) that the numbers follow: where this machine's differ from the record's, a difference
# may come from them, so they are reported (they do not make the comparison fail by themselves).
CONDITIONS = ("torch_version", "cpu_capability", "numpy_version", *LIBRARIES, "torch_cuda", "cudnn_version",
              "gpu_name", "compile_status")
# The per-sample (per-cell) records of a trial, stored beside its record (ResultsStore.write_trial).
PARTS = ("samples", "openset", "corruptions")


def _plain(value: Any) -> Any:
    """numpy scalars as Python values, NaN as None (pandas reads a missing value as NaN)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def config_from_record(record: dict[str, Any]) -> TrialConfig:
    """The TrialConfig of a trial record (fields a record predates keep their defaults)."""
    values = {}
    for name in FIELDS:
        if name not in record:
            continue
        value = _plain(record[name])
        if value is None and FIELDS[name].default is not None:
            continue  # a column other records have and this one lacks: the field's default
        if name == "loss_params" and isinstance(value, str):
            value = json.loads(value)
        values[name] = value
    if "precision" not in record and values.get("amp") is True:
        # written by 0.1 (no `precision` column yet), where amp=true meant today's default:
        # bf16 autocast on CUDA only (an explicit amp=true now also turns it on on a CPU)
        values["amp"] = None
    config = TrialConfig.from_dict(values)
    if config.trial_id != record["trial_id"]:
        raise UserError(f"the record of {record['trial_id']} rebuilds to trial {config.trial_id}: it was written "
                        "by a version whose trial identity differs; it cannot be reproduced with this one")
    return config


def recorded_threads(record: dict[str, Any]) -> int:
    """The torch threads the trial used; older records: from its CPU share, else 1."""
    from drainage_bench.trainer.provenance import threads_for

    threads = _plain(record.get("torch_threads"))
    if threads is not None:
        return int(threads)
    cpus = _plain(record.get("cpus_per_trial"))
    return threads_for(cpus if cpus is not None else 1)


def recorded_device(record: dict[str, Any]) -> str:
    used = _plain(record.get("device_used")) or "cpu"
    return "cuda" if str(used).startswith("cuda") else "cpu"


def recorded_precision(record: dict[str, Any], device: str):
    """The Precision the trial ran under (its ``precision`` column, as `Precision.for_device` set
    it), or None for a record without one (the config decides, as it did then)."""
    from drainage_bench.trainer.loop import Precision

    ran = _plain(record.get("precision"))
    return Precision.on(device, ran == "bf16") if ran in ("bf16", "fp32") else None


@dataclass
class Comparison:
    trial_id: str
    threads: int
    device: str
    rows: list[tuple[str, Any, Any, bool | None]]  # metric, recorded, new, identical (None: not recorded)
    epochs_differing: list[int]                    # epochs whose per-epoch metrics differ
    parts: list[tuple[str, bool | None]] = field(default_factory=list)  # PARTS kind, identical (None: not recorded)
    conditions: list[tuple[str, Any, Any]] = field(default_factory=list)  # CONDITIONS that differ: name, recorded, here

    @property
    def identical(self) -> bool:
        return (all(same is not False for *_, same in self.rows) and not self.epochs_differing
                and all(same is not False for _, same in self.parts))


def same(a: Any, b: Any) -> bool:
    """Exactly equal; two NaNs are equal."""
    a, b = _plain(a), _plain(b)
    return a == b or (a is None and b is None)


def load_record(results: Path, sweep: str, trial_id: str):
    """(the record as a dict, its per-epoch rows) from RESULTS/SWEEP; UserError when missing."""
    from drainage_bench.analysis.store import ResultsStore, list_sweeps

    store = ResultsStore(results, sweep)
    if not (store.path / "trials").is_dir():
        raise UserError(f"no sweep {sweep!r} under {results}; " + did_you_mean(sweep, list_sweeps(results) or ["(none)"]))
    if not store.trial_path(trial_id).exists():
        raise UserError(f"no trial {trial_id!r} in {store.path}; " + did_you_mean(trial_id, sorted(store.trial_ids())))
    record = store.trials([trial_id]).iloc[0].to_dict()
    if record.get("status") != "ok":
        raise UserError(f"trial {trial_id} is recorded as {record.get('status')}: only a finished trial can be "
                        "compared with a new run")
    epochs = store.epochs([trial_id])
    return record, epochs.to_dict("records")


def _condition(name: str, value: Any) -> Any:
    """A condition as compared: of ``compile_status`` only the state (``compiled``, ``eager``, ...),
    not the text of the error that made a trial run eager (paths and line numbers vary)."""
    return value.split(":", 1)[0] if name == "compile_status" and isinstance(value, str) else value


def same_part(stored: Path, fresh: Any) -> bool | None:
    """Whether the stored per-sample file `stored` holds exactly `fresh` (the new run's samples or
    open-set columns, or its corruption rows); None when the record has no such file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not stored.is_file():
        return None
    if not fresh:
        return False
    new = (pa.Table.from_pylist(fresh) if isinstance(fresh, list) else pa.table(fresh)).to_pandas()
    old = pq.read_table(stored).to_pandas().drop(columns="trial_id", errors="ignore")
    return list(old.columns) == list(new.columns) and old.equals(new)


def reproduce(results: Path, sweep: str, trial_id: str, data_root: str | None = None) -> Comparison:
    """Run the recorded trial again under its recorded conditions and compare (writes nothing)."""
    import torch

    from drainage_bench.trainer.loop import run_trial

    record, stored_epochs = load_record(Path(results), sweep, trial_id)
    config = config_from_record(record)
    device, threads = recorded_device(record), recorded_threads(record)
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trial {trial_id} ran on {record.get('device_used')} but this machine has no CUDA GPU")
    config = config.replace(device=device, **({"data_root": data_root} if data_root else {}))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = run_trial(config, precision=recorded_precision(record, device))
    finally:
        torch.set_num_threads(before)
    if result.status != "ok":
        raise UserError(f"the new run of {trial_id} failed: {result.error}")
    new = {**result.summary, "realized_noise_rate": result.realized_noise_rate,
           "noise_hash": result.noise["hash"] if result.noise else None, "epochs_run": len(result.epochs),
           "precision": result.extra.get("precision")}
    rows = []
    for metric, value in new.items():
        if metric in record:
            rows.append((metric, _plain(record[metric]), _plain(value), same(record[metric], value)))
        else:
            rows.append((metric, None, _plain(value), None))  # the record predates this metric
    differing = []
    for old, fresh in zip(stored_epochs, result.epochs):
        keys = [k for k in fresh if k not in TIMINGS and k in old]
        if not all(same(old[k], fresh[k]) for k in keys):
            differing.append(int(fresh["epoch"]))
    if len(stored_epochs) != len(result.epochs):
        differing.append(-1)
    fresh = {"samples": result.samples, "openset": result.openset, "corruptions": result.corruptions}
    files = {kind: Path(results) / sweep / kind / f"{trial_id}.parquet" for kind in PARTS}
    parts = [(kind, same_part(files[kind], fresh[kind])) for kind in PARTS if fresh[kind] or files[kind].is_file()]
    here = result.record()
    conditions = [(name, _plain(record[name]), here.get(name)) for name in CONDITIONS
                  if _plain(record.get(name)) is not None
                  and _condition(name, _plain(record[name])) != _condition(name, here.get(name))]
    return Comparison(trial_id, threads, device, rows, differing, parts, conditions)

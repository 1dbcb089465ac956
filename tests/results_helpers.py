"""Results stores for the table and plot tests: hand-made rows with known values, and a small
store of real trainer records (built once per test session)."""
from __future__ import annotations

import math
from pathlib import Path

from drainage_bench.analysis.store import ResultsStore

HAND_SWEEP = "hand"


def record(loss: str, display: str, noise: str, rate: float, seed: int, acc: float, *, status: str = "ok",
           realized: float | None = None, sweep: str = HAND_SWEEP, **extra) -> dict:
    """A trial record with the columns the tables read; everything else left out."""
    tag = "clean" if noise == "none" else f"{noise}{rate:g}"
    row = dict(trial_id=f"{loss}-{tag}-s{seed}-{extra.pop('suffix', 'hand')}", sweep=sweep, dataset="digits",
               loss=loss, model="digits_cnn", epochs=2, lr=0.05, loss_params="{}", noise=noise, noise_rate=rate,
               noise_key=None, seed=seed, label=None, loss_display=display, status=status,
               error=None if status == "ok" else "Diverged: training loss is nan at epoch 2",
               final_test_acc=acc if status == "ok" else math.nan,
               final_drainage_share_clean=math.nan, final_drainage_share_noisy=math.nan,
               realized_noise_rate=rate if realized is None else realized)
    row.update(extra)
    return row


# The hand-made sweep. By hand (percent):
#   CE       clean: 90, 92, 94 -> 92.00 ± 2.00 (sample std: sqrt((4 + 0 + 4) / 2) = 2)
#            asym0.4: 60, 64 (+ seed 2 failed) -> 62.00 ± 2.83 (sqrt((4 + 4) / 1) = 2.828...), n=2
#   Drainage clean: 91, 93, 95 -> 93.00 ± 2.00;  asym0.4: 80, 82, 84 -> 82.00 ± 2.00
#   GCE      clean: 89, 91 -> 90.00 ± 1.41 (sqrt(2)), n=2;  asym0.4: no trial -> —
#   realized noise of asym0.4: (0.38 + 0.40 + 0.45 + 0.39 + 0.41 + 0.40) / 6 = 0.405 -> 40.50
#   drainage share of mislabeled samples (Drainage, asym0.4): 0.70, 0.80, 0.90 -> 80.00 ± 10.00
#   drainage share of clean samples (Drainage): clean 0.02, 0.04, 0.06 -> 4.00 ± 2.00; asym0.4 0.10 x3
HAND_ROWS = [
    record("ce", "CE", "none", 0.0, 0, 0.90), record("ce", "CE", "none", 0.0, 1, 0.92),
    record("ce", "CE", "none", 0.0, 2, 0.94),
    record("ce", "CE", "asym", 0.4, 0, 0.60, realized=0.38), record("ce", "CE", "asym", 0.4, 1, 0.64, realized=0.40),
    record("ce", "CE", "asym", 0.4, 2, math.nan, status="failed", realized=0.45),
    record("drainage", "Drainage", "none", 0.0, 0, 0.91, final_drainage_share_clean=0.02),
    record("drainage", "Drainage", "none", 0.0, 1, 0.93, final_drainage_share_clean=0.04),
    record("drainage", "Drainage", "none", 0.0, 2, 0.95, final_drainage_share_clean=0.06),
    record("drainage", "Drainage", "asym", 0.4, 0, 0.80, realized=0.39,
           final_drainage_share_noisy=0.70, final_drainage_share_clean=0.10),
    record("drainage", "Drainage", "asym", 0.4, 1, 0.82, realized=0.41,
           final_drainage_share_noisy=0.80, final_drainage_share_clean=0.10),
    record("drainage", "Drainage", "asym", 0.4, 2, 0.84, realized=0.40,
           final_drainage_share_noisy=0.90, final_drainage_share_clean=0.10),
    record("gce", "GCE", "none", 0.0, 0, 0.89), record("gce", "GCE", "none", 0.0, 1, 0.91),
]


def write_rows(root: Path, rows: list[dict], sweep: str = HAND_SWEEP) -> Path:
    store = ResultsStore(root, sweep)
    for row in rows:
        store.write_trial({**row, "sweep": sweep}, [])
    return root


# The real store: two losses x two seeds, 2 epochs on digits with 20% asymmetric noise.
REAL_SWEEP = "real"
REAL_LOSSES = ("ce", "drainage")
REAL_SEEDS = (0, 1)
_real_root: Path | None = None


def real_store(tmp_path_factory) -> Path:
    """Trains the four trials once per session and writes them as the trainer's records."""
    global _real_root
    if _real_root is None:
        from drainage_bench.config import build_config
        from drainage_bench.trainer.loop import run_trial

        root = tmp_path_factory.mktemp("real-results")
        store = ResultsStore(root, REAL_SWEEP)
        for loss in REAL_LOSSES:
            for seed in REAL_SEEDS:
                config = build_config("digits", loss, {"epochs": 2, "seed": seed, "noise": "asym", "noise_rate": 0.2})
                result = run_trial(config)
                assert result.status == "ok", result.error
                store.write_trial(result.record(), result.epochs, result.samples)
        _real_root = root
    return _real_root

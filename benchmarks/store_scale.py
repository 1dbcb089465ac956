"""A 10,000-trial store: `table`, `table` with filters, `plot`, `status` and `sweep --dry-run`,
timed side by side in one run (and, with --baseline, the same commands on another checkout).

    python benchmarks/store_scale.py [--seeds 100] [--baseline DIR] [--repeat 3] [--keep DIR]

It trains one real digits trial (drainage, asym 0.4, 2 epochs) and copies its record, its epochs
and its per-sample file under the trial_ids of a spec of 10 losses x 10 noise settings x
`--seeds` seeds (10,000 trials by default: the spec expands with the real TrialConfigs, the
metric values vary by seed), plus the 36-trial quickstart store the same way. Every command runs
in a fresh process as a user would run it; "cold" means the store's index (and for `status`
the recorded trial list) does not exist yet, "warm" that an earlier command wrote it. The bare
imports of pandas, pyarrow, rich and typer are timed beside them. `--baseline DIR` also times
the commands with the package in DIR (e.g. `git archive main | tar -x -C DIR`), on the same
store. Run it under `nice -n 10` on a shared machine; the ratios are what to compare.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LOSSES = ("ce", "fl", "mae", "gce", "sce", "nce_rce", "nce_agce", "anl_ce", "ls", "drainage")
SPEC = """description = "10 losses x 10 noise settings x {seeds} seeds: the store-scale benchmark"
dataset = "digits"
seeds = {seed_list}
set = {{ epochs = 2 }}
[[noise]]
type = "none"
[[noise]]
type = "sym"
rates = [0.2, 0.4, 0.6, 0.8]
[[noise]]
type = "asym"
rates = [0.1, 0.2, 0.3, 0.4]
[[noise]]
type = "instance"
rates = [0.2]
""" + "".join(f'[[losses]]\nname = "{name}"\n' for name in LOSSES)


def real_trial():
    from drainage_bench.config import build_config
    from drainage_bench.trainer.loop import run_trial

    result = run_trial(build_config("digits", "drainage", {"epochs": 2, "noise": "asym", "noise_rate": 0.4}))
    assert result.status == "ok", result.error
    return result


def build_store(root: Path, sweep: str, configs, result) -> None:
    """Copies of `result` under every config's trial_id (files written directly: this is a fixture)."""
    import json

    from drainage_bench.catalog import LOSS_DISPLAY

    base = result.record()
    epochs = pa.Table.from_pylist([{"trial_id": "", **row} for row in result.epochs])
    samples = pa.table(result.samples)
    for kind in ("trials", "epochs", "samples"):
        (root / sweep / kind).mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(configs):
        record = {**base, **c.to_dict(), "trial_id": c.trial_id, "sweep": sweep,
                  "loss_display": c.label or LOSS_DISPLAY[c.loss]}
        record["final_test_acc"] = base["final_test_acc"] - 0.001 * (i % 17)  # values differ by trial
        flat = {k: (json.dumps(v, sort_keys=True) if isinstance(v, dict) else v) for k, v in record.items()}
        pq.write_table(pa.Table.from_pylist([flat]), root / sweep / "trials" / f"{c.trial_id}.parquet")
        ids = pa.array([c.trial_id] * epochs.num_rows)
        pq.write_table(epochs.set_column(0, "trial_id", ids), root / sweep / "epochs" / f"{c.trial_id}.parquet")
        if c.loss == "drainage":
            pq.write_table(samples, root / sweep / "samples" / f"{c.trial_id}.parquet")


def timed(cmd: list[str], env: dict, repeat: int, before=None, cwd: Path | None = None) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds) of `cmd` over `repeat` fresh processes (`before()` runs
    before each), run in `cwd`. CPU time (user + system of the child) depends less on the other users of a
    shared machine than the wall time does."""
    walls, cpus = [], []
    for _ in range(repeat):
        if before is not None:
            before()
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
        walls.append(time.perf_counter() - start)
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="seeds per (loss, noise): 100 gives 10,000 trials")
    parser.add_argument("--baseline", type=Path, help="another checkout to time the same commands with")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command of this checkout (median); the baseline runs once")
    parser.add_argument("--keep", type=Path, help="build the stores here and keep them (default: a temporary folder)")
    args = parser.parse_args()

    from drainage_bench.sweeps.expected import record_expected
    from drainage_bench.analysis.store import ResultsStore
    from drainage_bench.sweeps.spec import load_spec

    work = args.keep or Path(tempfile.mkdtemp(prefix="store-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results"
    spec_path = work / "big.toml"
    spec_path.write_text(SPEC.format(seeds=args.seeds, seed_list=list(range(args.seeds))))
    t0 = time.perf_counter()
    big = load_spec(str(spec_path)).expand()
    plan_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    trials_there = results / "big" / "trials"
    if args.keep and trials_there.is_dir() and len(list(trials_there.glob("*.parquet"))) == len(big):
        print(f"stores: reusing the {len(big)} + 36 trials under {results}")
    else:
        result = real_trial()
        if results.exists():
            shutil.rmtree(results)
        build_store(results, "big", big, result)
        quick_spec = load_spec("quickstart")
        build_store(results, "quickstart", quick_spec.expand(), result)
        record_expected(ResultsStore(results, "quickstart"), quick_spec, quick_spec.expand())
        print(f"stores: {len(big)} + 36 trials written in {time.perf_counter() - t0:.0f}s under {results}")
    print(f"planning: {len(big)} TrialConfigs expanded from the spec in {plan_seconds:.2f}s (in process)")

    def drop(*names):
        def clean():
            for name in names:
                path = results / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        return clean

    r = str(results)
    cases = [  # (label, argv after the CLI, what to remove first: None = warm)
        ("bare imports: pandas, pyarrow, rich, typer", None, None),
        ("table quickstart (36 trials)", ["table", "quickstart", "--results", r], None),
        ("status quickstart (36 trials)", ["status", "quickstart", "--results", r], None),
        ("table big, cold (no index)", ["table", "big", "--results", r], drop("big/index")),
        ("table big", ["table", "big", "--results", r], None),
        ("table big --where seed=0,1,2 --loss ce", ["table", "big", "--results", r, "--where", "seed=0,1,2",
                                                    "--loss", "ce"], None),
        ("plot big, cold (no index)", ["plot", "big", "--results", r, "--out", str(work / "fig")], drop("big/index")),
        ("plot big", ["plot", "big", "--results", r, "--out", str(work / "fig")], None),
        ("status big, cold (expands the spec)", ["status", str(spec_path), "--results", r], drop("big/expected.parquet")),
        ("status big", ["status", str(spec_path), "--results", r], None),
        ("sweep big --dry-run", ["sweep", str(spec_path), "--results", r, "--dry-run"], None),
    ]
    trees = [("this checkout", Path(__file__).resolve().parents[1])]
    if args.baseline:
        trees.append(("baseline", args.baseline.resolve()))
    rows = {}
    for name, tree in trees:
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        # Run outside any checkout: `python -m` puts the working folder first on sys.path, so from
        # the repository root every tree would import this checkout's package.
        where = subprocess.run([sys.executable, "-c", "import drainage_bench; print(drainage_bench.__file__)"],
                               env=env, cwd=work, capture_output=True, text=True, check=True).stdout.strip()
        if not Path(where).resolve().is_relative_to(tree):
            raise SystemExit(f"{name}: drainage_bench imports from {where}, not from {tree}")
        for label, argv, before in cases:
            if argv is None:
                cmd = [sys.executable, "-c", "import pandas, pyarrow, rich, typer"]
            else:
                cmd = [sys.executable, "-m", "drainage_bench.cli", *argv]
            repeat = 1 if name == "baseline" and argv is not None else args.repeat
            rows.setdefault(label, {})[name] = timed(cmd, env, repeat, before, cwd=work)
            wall, cpu = rows[label][name]
            print(f"{name:14s} {label:45s} {wall:7.2f} s wall {cpu:7.2f} s CPU", flush=True)
    print()
    names = [n for n, _ in trees]
    head = "| command | " + " | ".join(f"{n}: wall | {n}: CPU" for n in names)
    print(head + (" | ratio (wall) | ratio (CPU) |" if args.baseline else " |"))
    print("|---" * (1 + 2 * len(names) + 2 * bool(args.baseline)) + "|")
    for label, times in rows.items():
        cells = [f"{times[n][0]:.2f} s | {times[n][1]:.2f} s" if n in times else "— | —" for n in names]
        ratio = ""
        if args.baseline and "baseline" in times:
            ratio = "".join(f" | {times['baseline'][k] / times['this checkout'][k]:.1f}x" for k in (0, 1))
        print(f"| `{label}` | " + " | ".join(cells) + ratio + " |")
    bare = rows["bare imports: pandas, pyarrow, rich, typer"]["this checkout"]
    for label in ("table quickstart (36 trials)", "status quickstart (36 trials)"):
        mine = rows[label]["this checkout"]
        print(f"{label}: {mine[0] / bare[0]:.2f}x the bare imports' wall time, {mine[1] / bare[1]:.2f}x their CPU time")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Ray Tune overhead per trial: the same tiny sweep with and without reused actors, side by side.

    python benchmarks/sweep_overhead.py [--trials 8] [--epochs 1]

Runs N one-epoch digits trials twice in one Ray session (fresh result folders), once with
``reuse_actors=False`` (a new worker process per trial) and once with ``reuse_actors=True``, and
prints the wall time of each and their ratio. Also times the trials' own training, so the
difference is the scheduling overhead.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from drainage_bench.analysis.store import ResultsStore
from drainage_bench.config import build_config
from drainage_bench.sweeps.tune_runner import Progress, Resources, plan, run_trials


def sweep_seconds(n: int, epochs: int, reuse: bool, tag: str) -> tuple[float, float]:
    configs = [build_config("digits", "ce", {"epochs": epochs, "seed": s, "label": tag}) for s in range(n)]
    with tempfile.TemporaryDirectory() as root:
        store = ResultsStore(root, f"overhead-{tag}")
        todo = plan(configs, store)
        progress = Progress(plan=todo, store=store, metric="final_test_acc", emit=lambda _: None)
        start = time.perf_counter()
        run_trials(todo.todo, store, Resources(cpus_per_trial=1), progress=progress, reuse_actors=reuse)
        wall = time.perf_counter() - start
        train = store.trials()["wall_seconds"].sum()
    return wall, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    import ray

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - t0:.1f}s, {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
    fresh, fresh_train = sweep_seconds(args.trials, args.epochs, reuse=False, tag="fresh")
    reused, reused_train = sweep_seconds(args.trials, args.epochs, reuse=True, tag="reused")
    print(f"{args.trials} trials x {args.epochs} epoch(s) of digits, 1 CPU each")
    print(f"reuse_actors=False: {fresh:6.1f}s wall, {fresh_train:6.1f}s inside run_trial")
    print(f"reuse_actors=True:  {reused:6.1f}s wall, {reused_train:6.1f}s inside run_trial")
    print(f"ratio fresh/reused wall: {fresh / reused:.2f}")


if __name__ == "__main__":
    main()

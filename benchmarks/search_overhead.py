"""Cost of the single writer: one StudyOwner actor serving every storage call of a search.

    python benchmarks/search_overhead.py [--reports 200] [--cycles 30] [--storage sqlite:///...]

Starts Ray, puts a StudyOwner for a digits drainage study on a fresh storage (a temporary SQLite
file unless --storage), and times from the driver: an ask + tell cycle (a trial started and
finished), and the per-epoch `report` round trip a trial makes (report + should_prune through
the actor). No training runs: these are the costs a search adds on top of the epochs.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
    return out


def show(label: str, ms: list[float]) -> None:
    print(f"{label:<28} median {statistics.median(ms):7.2f} ms   p90 {sorted(ms)[int(0.9 * len(ms))]:7.2f} ms   (n={len(ms)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--storage", default=None)
    args = parser.parse_args()
    import ray

    from drainage_bench.sweeps import search as S

    folder = tempfile.mkdtemp()
    url = S.resolve_storage(args.storage or f"sqlite:///{folder}/optuna.db")
    search = S.make_search("digits", "drainage", "asym:0.4", overrides={"epochs": 30}, pruner="median")
    S.open_study(search, S.open_storage(url), url)
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    print(f"ray.init {time.perf_counter() - t0:.1f}s; storage {url}")
    handle = ray.remote(S.StudyOwner).options(num_cpus=0).remote(search, url, (socket.gethostname(), os.getpid()))
    owner = S._RemoteOwner(handle)
    complete = {"state": "complete", "value": 0.5, "final_val_acc": 0.5, "epochs_run": 30, "wall_seconds": 1.0}

    def cycle() -> None:
        number, _, _ = owner.ask()
        for epoch in range(1, 4):
            owner.report(number, epoch, 0.5)
        owner.tell(number, complete)

    show("ask + 3 reports + tell", timed(cycle, args.cycles))
    number, _, _ = owner.ask()
    steps = iter(range(1, args.reports + 1))
    show("report (+ should_prune)", timed(lambda: owner.report(number, next(steps), 0.5), args.reports))
    owner.close()


if __name__ == "__main__":
    main()

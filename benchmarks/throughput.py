"""Trainer throughput (training samples per second) on this machine, side by side.

    python benchmarks/throughput.py [--dataset digits] [--loss drainage] [--epochs 2]

Runs the same TrialConfig under each available variant in one process and prints samples/s of the
last epoch (the first pays one-off costs). On a CUDA machine the variants are fp32 and bf16
autocast (the trainer's default); on the CPU, 1 thread and all threads.
"""
from __future__ import annotations

import argparse
import os

import torch

from drainage_bench.config import build_config
from drainage_bench.trainer import loop


def samples_per_second(config, n_train: int) -> float:
    result = loop.run_trial(config)
    assert result.status == "ok", result.error
    return n_train / result.epochs[-1]["epoch_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--loss", default="drainage")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-root", default=os.environ.get("DRAINAGE_BENCH_DATA"))
    args = parser.parse_args()
    config = build_config(args.dataset, args.loss, {"epochs": args.epochs, "data_root": args.data_root})
    from drainage_bench.trainer.data import load_dataset, resolve_data_root

    n_train = len(load_dataset(args.dataset, resolve_data_root(args.data_root)).train_labels)
    print(f"{args.dataset} / {config.model} / {args.loss}, batch {config.batch_size}, {n_train} training samples")
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()}")
        bf16 = samples_per_second(config.replace(device="cuda"), n_train)
        fp32 = samples_per_second(config.replace(device="cuda", amp=False), n_train)
        print(f"fp32: {fp32:,.0f} samples/s   bf16 autocast: {bf16:,.0f} samples/s   ratio {bf16 / fp32:.2f}")
    else:
        threads = torch.get_num_threads()
        many = samples_per_second(config.replace(device="cpu"), n_train)
        torch.set_num_threads(1)
        one = samples_per_second(config.replace(device="cpu"), n_train)
        print(f"cpu, 1 thread: {one:,.0f} samples/s   {threads} threads: {many:,.0f} samples/s   ratio {many / one:.2f}")


if __name__ == "__main__":
    main()

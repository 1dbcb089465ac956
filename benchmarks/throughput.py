"""Trainer throughput (training samples per second) on this machine, side by side.

    python benchmarks/throughput.py [--dataset digits] [--loss drainage] [--epochs 3]

Runs the same TrialConfig under each variant in one process and prints training samples/s: the
median over the epochs after the first (which pays one-off costs such as cuDNN's autotuning) of
the training steps alone (`train_seconds`, evaluation excluded; the epoch ends by reading its
statistics back from the device, so the time covers finished work). Variants:

- CUDA: fp32 (convolutions in TF32, PyTorch's default) and bf16 autocast with channels_last
  (the trainer's default on a GPU).
- CPU: 1 thread, all threads, and the GPU recipe (bf16 autocast + channels_last) on the CPU,
  which shows that path running; its speed on a CPU says nothing about a GPU.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from drainage_bench.config import build_config
from drainage_bench.trainer import loop


def samples_per_second(config, n_train: int, precision: loop.Precision | None = None) -> float:
    result = loop.run_trial(config, precision=precision)
    assert result.status == "ok", result.error
    timed = result.epochs[1:] or result.epochs
    return n_train / statistics.median(e["train_seconds"] for e in timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--loss", default="drainage")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-root", default=os.environ.get("DRAINAGE_BENCH_DATA"))
    args = parser.parse_args()
    config = build_config(args.dataset, args.loss, {"epochs": args.epochs, "data_root": args.data_root})
    from drainage_bench.trainer.data import load_dataset, resolve_data_root

    n_train = len(load_dataset(args.dataset, resolve_data_root(args.data_root)).train_labels)
    print(f"{args.dataset} / {config.model} / {args.loss}, batch {config.batch_size}, {n_train} training samples, "
          f"{args.epochs} epochs; torch {torch.__version__}")
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()}")
        bf16 = samples_per_second(config.replace(device="cuda"), n_train)
        fp32 = samples_per_second(config.replace(device="cuda", amp=False), n_train)
        print(f"fp32 (TF32 convs): {fp32:,.0f} samples/s   bf16 autocast + channels_last: {bf16:,.0f} samples/s   "
              f"ratio {bf16 / fp32:.2f}")
    else:
        threads = torch.get_num_threads()
        cpu = config.replace(device="cpu")
        many = samples_per_second(cpu, n_train)
        gpu_recipe = samples_per_second(cpu, n_train, loop.Precision(autocast=True, channels_last=True))
        torch.set_num_threads(1)
        one = samples_per_second(cpu, n_train)
        print(f"cpu fp32, 1 thread: {one:,.0f} samples/s   {threads} threads: {many:,.0f} samples/s   "
              f"ratio {many / one:.2f}")
        print(f"cpu bf16 autocast + channels_last, {threads} threads: {gpu_recipe:,.0f} samples/s   "
              f"ratio to fp32 {gpu_recipe / many:.2f}")


if __name__ == "__main__":
    main()

"""The GPU suite's measurements (run through benchmarks/gpu_suite.sh).

    python benchmarks/gpu_suite.py [--small] [--only throughput,reference,packing]

On CIFAR-10-shaped random uint8 data (50,000 training images of 3x32x32, written as a fake
`cifar-10-batches-py` folder in a temporary data root):

1. throughput: cnn8 and resnet34 training images/s (the trainer's forward: uint8 on the device,
   crop + flip as batched ops, normalisation, then the model, the CE loss, SGD), for fp32,
   bf16 autocast + channels_last, and bf16 + channels_last + torch.compile; peak GPU memory each;
2. reference: the same models in a reference-style loop (a Dataset of numpy images with the
   per-sample torchvision transforms RandomCrop(32, 4), RandomHorizontalFlip, ToTensor,
   Normalize, a DataLoader with worker processes, fp32), images/s;
3. packing: `drainage-bench sweep` of 1, 2, 4 and 8 cnn8 trials at --gpus-per-trial 1, 0.5,
   0.25, 0.125 (all at once): trial-epochs per hour and the peak GPU memory of each trial
   (its record's peak_gpu_memory_mb).

`--small` runs every part on the CPU with small data and few steps: the check that the script
works before the device run (its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

MODELS = ("cnn8", "resnet34")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def write_fake_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """A `cifar-10-batches-py` folder of random uint8 images (5 train batches and a test batch)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per = [n_train // 5] * 5
    for name, count in [*((f"data_batch_{i + 1}", c) for i, c in enumerate(per)), ("test_batch", n_test)]:
        content = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                   b"labels": [int(y) for y in rng.integers(0, 10, count)],
                   b"filenames": [f"{i}.png".encode() for i in range(count)]}
        (folder / name).write_bytes(pickle.dumps(content, protocol=4))  # 2 would name _codecs.encode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(model_name: str, mode: str, device: torch.device, batch: int, steps: int, warmup: int) -> dict:
    """Training images/s of the trainer's step on random uint8 CIFAR images, and peak memory."""
    from drainage_bench.trainer.augment import make_augment
    from drainage_bench.trainer.loop import Forward, Precision
    from drainage_bench.trainer.models import make_model

    torch.manual_seed(0)
    bf16 = mode != "fp32"
    model = make_model(model_name, 10, 3, 32).to(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model) if mode == "bf16+compile" else model
    shape = (1, -1, 1, 1)
    p = SimpleNamespace(mean=torch.tensor(MEAN, device=device).view(shape), std=torch.tensor(STD, device=device).view(shape))
    gen = torch.Generator(device=device).manual_seed(1)
    forward = Forward(model, p, make_augment("crop_flip"), gen, Precision(bf16, bf16), train_model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randint(0, 256, (batch * 4, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch * 4,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start_compile = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            compile_s = time.perf_counter() - start_compile
            start = time.perf_counter()
        i = (step % 4) * batch
        loss = F.cross_entropy(forward(images[i:i + batch], train=True), labels[i:i + batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"model": model_name, "mode": mode, "images_per_s": steps * batch / seconds, "warmup_s": compile_s,
            "peak_mb": peak}


class _RandomCifar(torch.utils.data.Dataset):
    """numpy HWC uint8 images through per-sample torchvision transforms, as reference code does."""

    def __init__(self, n: int) -> None:
        from torchvision import transforms

        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.labels = rng.integers(0, 10, n)
        self.transform = transforms.Compose([transforms.ToPILImage(), transforms.RandomCrop(32, padding=4),
                                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                             transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.labels[i])


def reference(model_name: str, device: torch.device, batch: int, steps: int, workers: int) -> dict:
    from drainage_bench.trainer.models import make_model

    torch.manual_seed(0)
    model = make_model(model_name, 10, 3, 32).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = torch.utils.data.DataLoader(_RandomCifar(batch * (steps + 2)), batch_size=batch, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda", drop_last=True)
    start = None
    for step, (x, y) in enumerate(loader):
        if step == 2:  # the workers have started
            _sync(device)
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return {"model": model_name, "mode": f"reference ({workers} workers)",
            "images_per_s": steps * batch / (time.perf_counter() - start)}


PACK_SPEC = """dataset = "cifar10"
seeds = {seeds}
set = {{ epochs = {epochs}, model = "cnn8", eval_every = {epochs} }}
[[noise]]
type = "none"
[[losses]]
name = "ce"
"""


def packing(data_root: Path, work: Path, packs: list[int], epochs: int, small: bool) -> list[dict]:
    """Sweeps of k trials at 1/k of a GPU each, all at once: trial-epochs per hour, peak memory."""
    import pandas as pd

    rows = []
    for k in packs:
        spec = work / f"pack{k}.toml"
        spec.write_text(PACK_SPEC.format(seeds=list(range(k)), epochs=epochs))
        results = work / f"results-pack{k}"
        cmd = [sys.executable, "-m", "drainage_bench.cli", "sweep", str(spec), "--results", str(results),
               "--data-root", str(data_root), "--max-concurrent", str(k), "--cpus-per-trial", "1"]
        if not small:
            cmd += ["--gpus-per-trial", f"{1 / k:g}"]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"packing k={k} failed:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}")
        trials = pd.concat([pd.read_parquet(p) for p in (results / spec.stem / "trials").glob("*.parquet")])
        ok = trials[trials["status"] == "ok"]
        if len(ok) < k:
            raise SystemExit(f"packing k={k}: {k - len(ok)} trials failed: {trials['error'].dropna().iloc[:1].tolist()}")
        train = float(ok["wall_seconds"].max())
        peak = ok["peak_gpu_memory_mb"].max() if "peak_gpu_memory_mb" in ok else float("nan")
        rows.append({"trials": k, "gpus_per_trial": 0 if small else 1 / k, "ok": len(ok), "wall_s": wall,
                     "trial_epochs_per_hour": k * epochs / wall * 3600,
                     "trial_epochs_per_hour_inside": k * epochs / train * 3600,
                     "peak_mb_per_trial": float(peak), "device": ",".join(sorted(set(ok["device_used"])))})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick CPU check of the script, numbers meaningless")
    parser.add_argument("--only", default="throughput,reference,packing")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    parts = set(args.only.split(","))
    cuda = torch.cuda.is_available() and not args.small
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and not args.small:
        raise SystemExit("no CUDA GPU visible: run with --small for the CPU check")
    batch, steps, warmup = (16, 3, 1) if args.small else (128, 200, 20)
    models = ("cnn8",) if args.small else MODELS
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}, "
          f"{'small CPU check' if args.small else 'full run'}", flush=True)
    if "throughput" in parts:
        for name in models:
            for mode in ("fp32", "bf16+channels_last", "bf16+compile"):
                if args.small and mode == "bf16+compile":
                    continue  # compiling takes minutes on a CPU; the device run does it
                print(json.dumps(throughput(name, mode, device, batch, steps, warmup)), flush=True)
    if "reference" in parts:
        for name in models:
            print(json.dumps(reference(name, device, batch, steps, 2 if args.small else args.workers)), flush=True)
    if "packing" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            write_fake_cifar10(work / "data", 500 if args.small else 50_000, 100 if args.small else 10_000)
            packing(work / "data", work, [1, 2] if args.small else [1, 2, 4, 8], 1 if args.small else 2, args.small)


if __name__ == "__main__":
    main()

"""The trainer against a reference-style PyTorch loop on MNIST, side by side in one run.

    python benchmarks/reference_loop.py --data-root ../shared/datasets [--epochs 1] [--seeds 0 1 2] [--workers 2]
                                        [--set amp=true ...]   (trainer settings away from the defaults)

Both train the same model (the MNIST recipe's cnn4), with the same loss (CE), batch (128),
optimiser (SGD, lr 0.01, momentum 0.9, weight decay 1e-3), gradient clip (5), cosine schedule
and epochs, for each seed. The trainer runs with its defaults (`build_config("mnist", "ce")`:
uint8 tensors in memory, a batch is an index slice, normalised as one batched op). The reference
loop is what most papers' code does: torchvision's `datasets.MNIST` with a per-sample
`ToTensor()` + `Normalize((0.1307,), (0.3081,))`, a shuffling `DataLoader` with worker processes.
Printed: training samples per second (the training steps and their data loading, evaluation
excluded, median over epochs) of each, their ratio, and the test accuracy of every seed; and the
eager fp32 model step alone (no data pipeline), the bound on what data loading can gain. The MNIST
recipe compiles (`compile = true`): with `--epochs 1` the trainer's one epoch includes the
compilation, so measure with `--epochs 3` (the median epoch is a compiled one).

torchvision reads the MNIST files from a writable copy of the data root's `MNIST/raw` (it checks
the md5 of each .gz and extracts it there; nothing is downloaded when they match).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from drainage_bench.config import build_config, parse_set
from drainage_bench.trainer.loop import run_trial, seed_everything
from drainage_bench.trainer.models import make_model


def torchvision_mnist(data_root: Path, workdir: Path):
    from torchvision import datasets, transforms

    shutil.copytree(data_root / "MNIST", workdir / "MNIST", dirs_exist_ok=True)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(str(workdir), train=True, download=True, transform=transform)
    test = datasets.MNIST(str(workdir), train=False, download=True, transform=transform)
    return train, test


def model_and_step(config):
    """The model, its SGD optimiser and one eager fp32 training step on a batch (x, y): forward,
    CE, backward, gradient clip, SGD step, as the reference loop runs it."""
    seed_everything(config.seed)
    model = make_model(config.model, 10, 1, 28)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

    return model, optimizer, step


def reference_trial(config, train, test, workers: int) -> tuple[list[float], float]:
    """(training seconds per epoch, final test accuracy) of the reference-style loop."""
    model, optimizer, step = model_and_step(config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    loader = torch.utils.data.DataLoader(train, batch_size=config.batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(config.seed))
    seconds = []
    for _ in range(config.epochs):
        model.train()
        start = time.perf_counter()
        for x, y in loader:
            step(x, y)
        seconds.append(time.perf_counter() - start)
        scheduler.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=512, num_workers=workers):
            correct += int((model(x)[:, :10].argmax(1) == y).sum())
    return seconds, correct / len(test)


def model_step_rate(config, steps: int = 100) -> float:
    """Training samples/s of the model step alone, eager fp32: one in-memory batch of normalised
    random images, forward + loss + backward + clip + SGD step, no data pipeline at all. No loop
    that feeds this model eagerly in fp32 can beat it: it bounds what better data loading can
    gain over the reference."""
    _, _, step = model_and_step(config)
    x, y = torch.randn(config.batch_size, 1, 28, 28), torch.randint(0, 10, (config.batch_size,))
    for _ in range(10):
        step(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    return steps * config.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a trainer setting away from its defaults, e.g. amp=true (bf16 on a CPU with bf16)")
    args = parser.parse_args()
    n_train = 60_000
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        train, test = torchvision_mnist(args.data_root, Path(workdir))
        for seed in args.seeds:
            config = build_config("mnist", "ce", {**parse_set(args.overrides), "epochs": args.epochs, "seed": seed,
                                                  "device": "cpu",
                                                  "data_root": str(args.data_root)})
            result = run_trial(config)
            assert result.status == "ok", result.error
            ours = n_train / statistics.median(e["train_seconds"] for e in result.epochs)
            ref_seconds, ref_acc = reference_trial(config, train, test, args.workers)
            ref = n_train / statistics.median(ref_seconds)
            bare = model_step_rate(config)
            how = f'{result.extra.get("compile_status", "")}, {result.extra.get("precision", "")}'
            rows.append((seed, ours, result.summary["final_test_acc"], ref, ref_acc, how, bare))
            print(f"seed {seed}: trainer {ours:,.0f} samples/s, test {100 * rows[-1][2]:.2f}% "
                  f"({rows[-1][5]}) | reference {ref:,.0f} samples/s, test {100 * ref_acc:.2f}% | "
                  f"ratio {ours / ref:.2f}x | eager model step alone {bare:,.0f} samples/s "
                  f"({bare / ref:.2f}x the reference)", flush=True)
    ratios = [r[1] / r[3] for r in rows]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else float("nan")  # noqa: E731
    ours_acc, ref_acc = [100 * r[2] for r in rows], [100 * r[4] for r in rows]
    print(f"cnn4, CE, batch 128, SGD, {args.epochs} epoch(s), {len(rows)} seeds, {torch.get_num_threads()} threads, "
          f"{args.workers} DataLoader workers, torch {torch.__version__}")
    print(f"samples/s ratio trainer / reference: {mean(ratios):.2f}x (per seed {', '.join(f'{r:.2f}' for r in ratios)})")
    bound = [r[6] / r[3] for r in rows]
    print(f"eager fp32 model step alone / reference: {mean(bound):.2f}x (per seed {', '.join(f'{r:.2f}' for r in bound)}): "
          "the most any data pipeline could gain without changing the model's computation")
    print(f"test accuracy: trainer {mean(ours_acc):.2f} ± {sd(ours_acc):.2f}%, reference {mean(ref_acc):.2f} ± "
          f"{sd(ref_acc):.2f}% (mean ± sample std over seeds)")


if __name__ == "__main__":
    main()

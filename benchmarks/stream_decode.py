"""Streamed image decoding (WebVision / Clothing1M path): images per second, side by side.

    python benchmarks/stream_decode.py [--images 384] [--batch 64] [--passes 2]

Writes ``--images`` generated JPEGs of WebVision's size (500x375, quality 90, smooth random
content) to a temporary folder and measures, in one run:

- the JPEG decoding limit of one CPU core: ``torchvision.io.decode_image`` of every file, one
  thread, in this process, no resizing or cropping;
- the trainer's stream (``stream.StreamBatches``) with 0 (decoding in the main process), 1 and 2
  DataLoader workers: the training view (RandomResizedCrop 224, the WebVision recipe) and the
  evaluation view (resize 256, center crop 224), uint8 batches handed to the CPU "device".

Each figure is the median over ``--passes`` timed passes after one warm-up pass (which starts the
kept workers and fills the page cache). The whole run uses one intra-op thread, as DataLoader
workers do (torch sets 1 thread in each): on a loaded machine, two threads fighting over the
antialiased resize in the main process made 0 workers several times slower, not faster.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from drainage_bench.trainer import stream
from drainage_bench.trainer.data import ImageFiles


def write_images(folder: Path, count: int, width: int = 500, height: int = 375) -> list[Path]:
    """Smooth random images (a coarse random grid, bilinearly upsampled), JPEG quality 90."""
    from torchvision.io import encode_jpeg

    generator = torch.Generator().manual_seed(0)
    paths = []
    for n in range(count):
        coarse = torch.rand(1, 3, 12, 16, generator=generator)
        image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        noise = torch.rand(3, height, width, generator=generator) * 0.1
        pixels = ((image[0] + noise).clamp(0, 1) * 255).to(torch.uint8)
        paths.append(folder / f"{n:05d}.jpg")
        paths[-1].write_bytes(encode_jpeg(pixels, quality=90).numpy().tobytes())
    return paths


def decode_limit(files: ImageFiles, passes: int) -> float:
    from torchvision.io import ImageReadMode, decode_image

    times = []
    for _ in range(passes + 1):
        start = time.perf_counter()
        for path in files.paths:
            decode_image(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB)
        times.append(time.perf_counter() - start)
    return len(files) / statistics.median(times[1:])


def stream_rate(files: ImageFiles, workers: int, train: bool, batch: int, passes: int) -> float:
    batches = stream.StreamBatches(files, np.arange(len(files)), torch.device("cpu"), persistent=workers > 0,
                                   crop="random_resized", seed=0, workers=workers)
    order = torch.arange(len(files))
    times = []
    for _ in range(passes + 1):
        start = time.perf_counter()
        count = sum(len(images) for _, images in batches(order, batch, train=train))
        times.append(time.perf_counter() - start)
        assert count == len(files)
    return len(files) / statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    import torchvision

    torch.set_num_threads(1)

    print(f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{args.images} JPEGs 500x375, batch {args.batch}, median of {args.passes} passes; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        files = ImageFiles(write_images(Path(tmp), args.images))
        size = sum(p.stat().st_size for p in files.paths) / len(files) / 1024
        limit = decode_limit(files, args.passes)
        print(f"mean file size {size:.0f} KiB; decode only, 1 core: {limit:,.0f} images/s")
        print("| workers | training view (RandomResizedCrop 224) | ratio to 1-core decode | evaluation view (256, center 224) | ratio |")
        print("|---|---|---|---|---|")
        for workers in (0, 1, 2):
            train = stream_rate(files, workers, True, args.batch, args.passes)
            evaluation = stream_rate(files, workers, False, args.batch, args.passes)
            print(f"| {workers} | {train:,.0f} | {train / limit:.2f} | {evaluation:,.0f} | {evaluation / limit:.2f} |")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

"""Streamed image folders (WebVision, Clothing1M): training crops, and batches on the device.

An image-folder dataset (:class:`data.ImageFiles`) is a list of files. DataLoader workers read
and decode them (libjpeg-turbo through ``torchvision.io``, PIL for other formats) and cut each
image to its 224x224 view; a batch of uint8 views then goes to the device once. On a CUDA
device, where torchvision can decode JPEG there (``decode_jpeg(device="cuda")``, nvJPEG), the
workers only read the files' bytes and the main process decodes and crops the batch on the GPU.
The rest of the augmentation (flip, colour jitter, cutout) runs on the device on the whole batch
(``augment.py``).

Views (the ``train_crop`` field for training; evaluation always uses ``center``):

- ``center``: short side resized to 256 (bilinear, antialiased), center crop 224x224; for files
  with ``square`` set (Clothing1M) the whole image is squashed to 256x256 instead (the drainage
  code's ``Resize((256, 256))``), then center crop 224x224. The evaluation view, and Clothing1M's
  training view.
- ``random_resized``: torchvision's ``RandomResizedCrop(224)``: a box of area fraction
  s ~ U(0.08, 1) and aspect ratio r with log r ~ U(log 3/4, log 4/3), at a uniform position, up to
  10 tries; else the central box with the ratio clamped to [3/4, 4/3]; resized to 224x224
  (bilinear, antialiased). WebVision's training view (as in the reference code); ``square`` does
  not apply to it.

Seeding: for every training pass the main process draws one seed per sample, in batch order,
from a generator seeded with the trial's seed; a sample's crop comes from a ``torch.Generator``
seeded with its seed. So the crops depend on the trial seed and the pass only, never on the
number of workers or on which worker decoded what. (The DataLoader's own generator, which seeds
each worker's torch, python and numpy RNGs with base seed + worker id, is seeded from the trial
seed too; nothing here draws from those.)
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Iterator

import numpy as np
import torch

from drainage_bench.trainer.data import STREAM_IMAGE_SIZE, ImageFiles

RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_TRIES = 10
MAX_WORKERS = 8
NO_SEED = -1  # evaluation passes: the center view


def random_resized_box(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop box, drawn exactly as torchvision's ``get_params``
    draws it from the global generator, but from ``generator``."""
    area = height * width
    log_ratio = torch.log(torch.tensor(RRC_RATIO))
    for _ in range(RRC_TRIES):
        target_area = area * torch.empty(1).uniform_(RRC_SCALE[0], RRC_SCALE[1], generator=generator).item()
        aspect_ratio = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(RRC_RATIO):
        w, h = width, int(round(width / min(RRC_RATIO)))
    elif in_ratio > max(RRC_RATIO):
        h, w = height, int(round(height * max(RRC_RATIO)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_view(image: torch.Tensor, generator: torch.Generator, size: int = STREAM_IMAGE_SIZE) -> torch.Tensor:
    """RandomResizedCrop(size) of a uint8 (3, H, W) image (on any device), box from ``generator``."""
    from torchvision.transforms.v2 import functional as TF

    top, left, h, w = random_resized_box(image.shape[-2], image.shape[-1], generator)
    return TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)


# train_crop -> the random view it draws (None: the files' own center view, `ImageFiles.center`)
CROPS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None] = {
    "center": None,
    "random_resized": random_resized_view,
}


def view(image: torch.Tensor, crop: str, seed: int, files: ImageFiles) -> torch.Tensor:
    """The 224x224 view of a decoded image of `files`: ``crop`` seeded with ``seed``; the center
    view (crop ``center``, or NO_SEED) is the files' own (`ImageFiles.center`: Clothing1M's
    squashes the image to 256x256 first)."""
    draw = CROPS[crop]
    if seed == NO_SEED or draw is None:
        return files.center(image)
    return draw(image, torch.Generator().manual_seed(seed))


class _Views(torch.utils.data.Dataset):
    """``views[(pos, seed)]`` -> (pos, uint8 view), or with ``raw`` (pos, file bytes, seed, index)."""

    def __init__(self, files: ImageFiles, indices: np.ndarray, crop: str, raw: bool) -> None:
        self.files, self.indices, self.crop, self.raw = files, indices, crop, raw

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: list[int]):
        pos, seed = key
        index = int(self.indices[pos])
        if self.raw:
            return pos, self.files.read(index), seed, index
        return pos, view(self.files.decode(index), self.crop, seed, self.files)


class _KeyedBatches:
    """A batch sampler over (position, seed) rows set before each pass (read in the main
    process, so kept workers see the change)."""

    def __init__(self) -> None:
        self.batch_size, self.keys = 1, torch.zeros(0, 2, dtype=torch.int64)

    def __iter__(self):
        return (b.tolist() for b in self.keys.split(self.batch_size))

    def __len__(self) -> int:
        return math.ceil(len(self.keys) / self.batch_size)


@functools.cache
def gpu_decoding(device: torch.device) -> bool:
    """Whether JPEG files are decoded on ``device`` (CUDA, with torchvision's nvJPEG decoder)."""
    if device.type != "cuda":
        return False
    from torchvision.io import decode_jpeg, encode_jpeg

    try:
        decode_jpeg([encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8))], device=device)
        return True
    except (RuntimeError, TypeError):  # torchvision built without nvJPEG
        return False


def _list_collate(batch):
    return batch


class StreamBatches:
    """Views of image files as uint8 batches on the device; positions refer to ``indices``.

    One DataLoader per source, its sampler's keys set for each pass. The training source keeps
    its workers between passes (``persistent``); evaluation sources start theirs for each pass.
    ``__call__(order, batch_size, train)``: with ``train``, each sample's view is ``crop`` from a
    seed drawn here (see the module docstring); otherwise the center view. ``decode_on_device``
    (default: where nvJPEG is available) decodes JPEG batches with ``decode_jpeg(device=...)`` in
    the main process instead of in the workers.
    """

    def __init__(self, files: ImageFiles, indices: np.ndarray, device: torch.device, persistent: bool,
                 crop: str = "center", seed: int = 0, workers: int | None = None,
                 decode_on_device: bool | None = None) -> None:
        self.device, self.crop, self.files = device, crop, files
        self.sampler = _KeyedBatches()
        self.seeds = torch.Generator().manual_seed(seed)
        self.on_device = gpu_decoding(device) if decode_on_device is None else decode_on_device
        workers = min(MAX_WORKERS, torch.get_num_threads()) if workers is None else workers
        self.loader = torch.utils.data.DataLoader(
            _Views(files, indices, crop, raw=self.on_device), batch_sampler=self.sampler, num_workers=workers,
            persistent_workers=persistent and workers > 0, pin_memory=device.type == "cuda" and not self.on_device,
            collate_fn=_list_collate if self.on_device else None,
            generator=torch.Generator().manual_seed(seed))

    def __call__(self, order: torch.Tensor, batch_size: int, train: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seeds = (torch.randint(0, 2**62, (len(order),), generator=self.seeds) if train
                 else torch.full((len(order),), NO_SEED))
        self.sampler.keys, self.sampler.batch_size = torch.stack([order.cpu(), seeds], 1), batch_size
        for batch in self.loader:
            if self.on_device:
                idx, images = self._decode_on_device(batch)
            else:
                idx, images = batch
            yield idx.to(self.device, non_blocking=True), images.to(self.device, non_blocking=True)

    def _decode_on_device(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """nvJPEG on the whole batch; a file it cannot decode (PNG, CMYK) is decoded on the CPU."""
        from torchvision.io import ImageReadMode, decode_jpeg

        pos, raw, seeds, indices = zip(*batch)
        try:
            images = decode_jpeg(list(raw), mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            images = [self.files.decode(i).to(self.device) for i in indices]
        views = [view(image, self.crop, seed, self.files) for image, seed in zip(images, seeds)]
        return torch.tensor(pos), torch.stack(views)

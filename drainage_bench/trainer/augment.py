"""Batch augmentations on the device (airbench style: whole-batch tensor ops, no per-sample loop).

An augmentation is ``augment(images, generator) -> images`` on float images (B, C, H, W); every
random draw comes from ``generator``, which must live on the images' device. Registry:

- ``none``: the images unchanged.
- ``crop_flip``: random crop with zero padding 4 (a per-sample offset in 0..8 along each axis of
  the padded image), then a horizontal flip with probability 1/2 per sample.
- ``crop_flip_rotate``: ``crop_flip``, then a rotation by a per-sample angle drawn uniformly from
  [-20, 20] degrees (bilinear, zeros outside the image).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from drainage_bench.errors import lookup

CROP_PADDING = 4
MAX_ROTATION_DEGREES = 20.0

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def crop_at(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each zero-padded image at its own offset: ``pad(x)[b, :, top[b]:top[b]+H, left[b]:left[b]+W]``."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = top[:, None] + torch.arange(height, device=images.device)  # (B, H)
    cols = left[:, None] + torch.arange(width, device=images.device)  # (B, W)
    padded = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, padded.shape[3]))
    return padded.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


def random_crop(images: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """Random crop of the zero-padded images, offsets uniform in 0..2*padding per axis and sample."""
    offsets = torch.randint(0, 2 * padding + 1, (2, images.shape[0]), generator=generator, device=images.device)
    return crop_at(images, offsets[0], offsets[1], padding)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate image b counter-clockwise (as displayed) by ``degrees[b]`` about its centre.

    Output pixel p samples the input at R(angle) p in pixel units, which in the normalised
    coordinates of ``affine_grid`` is ``[[cos, -sin*H/W], [sin*W/H, cos]]``; bilinear, zeros outside.
    """
    height, width = images.shape[-2:]
    radians = torch.deg2rad(degrees.to(images.dtype))
    cos, sin, zero = radians.cos(), radians.sin(), torch.zeros_like(radians)
    theta = torch.stack(
        [torch.stack([cos, -sin * height / width, zero], -1), torch.stack([sin * width / height, cos, zero], -1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_angles(
    count: int, generator: torch.Generator, device: torch.device, max_degrees: float = MAX_ROTATION_DEGREES
) -> torch.Tensor:
    """``count`` angles uniform in [-max_degrees, max_degrees]."""
    return (torch.rand(count, generator=generator, device=device) * 2 - 1) * max_degrees


def no_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images


def crop_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return random_flip(random_crop(images, generator), generator)


def crop_flip_rotate(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    images = crop_flip(images, generator)
    return rotate(images, random_angles(images.shape[0], generator, images.device))


AUGMENTS: dict[str, Augment] = {
    "none": no_augment,
    "crop_flip": crop_flip,
    "crop_flip_rotate": crop_flip_rotate,
}


def make_augment(name: str) -> Augment:
    """The augmentation called ``name``."""
    return lookup("augmentation", name, AUGMENTS)

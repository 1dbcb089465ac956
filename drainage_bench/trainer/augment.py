"""Batch augmentations on the device (airbench style: whole-batch tensor ops, no per-sample loop).

An augmentation is ``augment(images, generator) -> images`` on float images (B, C, H, W); every
random draw comes from ``generator``, which must live on the images' device. Registry:

- ``none``: the images unchanged.
- ``crop_flip``: random crop with zero padding 4 (a per-sample offset in 0..8 along each axis of
  the padded image), then a horizontal flip with probability 1/2 per sample.
- ``crop_flip_rotate``: ``crop_flip``, then a rotation by a per-sample angle drawn uniformly from
  [-20, 20] degrees (bilinear, zeros outside the image).
- ``crop_flip_rotate15``: the same with [-15, 15] degrees (the supervised-mollification paper).
- ``flip_jitter``: the rest of WebVision's training transform after its RandomResizedCrop (which
  runs where the image is decoded, ``stream.py``): a horizontal flip with probability 1/2, then
  torchvision's ``ColorJitter(0.4, 0.4, 0.4, 0.2)`` per sample (see :func:`color_jitter`).
- ``cutout``: Clothing1M's: one square hole per image, half the image side (112 at 224 px)
  (DeVries & Taylor 2017, "Improved Regularization of Convolutional Neural Networks with
  Cutout"), see :func:`cutout`.
"""
from __future__ import annotations

import functools

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


def crop_flip_rotate(images: torch.Tensor, generator: torch.Generator, **angles) -> torch.Tensor:
    """``crop_flip``, then `rotate` by `random_angles` (its ``max_degrees`` by default, or as given)."""
    images = crop_flip(images, generator)
    return rotate(images, random_angles(images.shape[0], generator, images.device, **angles))


# --------------------------------------------------------------------------- colour jitter, cutout

JITTER = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue (WebVision's reference code)
CUTOUT_FRACTION = 0.5  # the hole's side / the image's side: 112 at 224 px, as the reference's Cutout(112)
CUTOUT_FILL = (0.485, 0.456, 0.406)  # the ImageNet mean: 0 after normalisation, as the reference's
# Cutout, which comes after Normalize, leaves it
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(-3)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    maxc, minc = x.amax(-3), x.amin(-3)
    delta = maxc - minc
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    hue = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = torch.where(delta == 0, torch.zeros_like(hue), (hue / 6) % 1)
    sat = torch.where(maxc == 0, torch.zeros_like(delta), delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc))
    return torch.stack([hue, sat, maxc], -3)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(-3)
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(3, 1, 1) + 6 * h.unsqueeze(-3)) % 6
    return v.unsqueeze(-3) - (v * s).unsqueeze(-3) * (torch.minimum(k, 4 - k).clamp(0, 1))


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hue = (hsv[:, :1] + shift) % 1
    return _hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], 1))


def color_jitter(images: torch.Tensor, generator: torch.Generator, strength=JITTER) -> torch.Tensor:
    """torchvision's ``ColorJitter(b, c, s, h)`` on each image of a batch of [0, 1] floats.

    Per image: brightness factor f_b ~ U[1 - b, 1 + b] (x -> clamp(f_b x)); contrast f_c ~
    U[1 - c, 1 + c] (x -> clamp(f_c x + (1 - f_c) mean(gray(x)))); saturation f_s ~ U[1 - s, 1 + s]
    (x -> clamp(f_s x + (1 - f_s) gray(x))); hue shift f_h ~ U[-h, h] (the HSV hue plus f_h, mod 1);
    the four applied in an order drawn per image, gray = 0.2989 R + 0.587 G + 0.114 B, as
    torchvision does (one-channel images: gray is the image, saturation and hue leave it as it
    is). Each step computes the four adjustments for the whole batch and keeps, per image, the
    one its order names (batched, no loop over images).
    """
    batch, device = images.shape[0], images.device
    b, c, s, h = strength
    low = torch.tensor([1 - b, 1 - c, 1 - s, -h], device=device)
    high = torch.tensor([1 + b, 1 + c, 1 + s, h], device=device)
    factors = low + (high - low) * torch.rand(batch, 4, generator=generator, device=device)
    order = torch.rand(batch, 4, generator=generator, device=device).argsort(1)
    f = [factors[:, k].view(-1, 1, 1, 1) for k in range(4)]
    x, rgb = images, images.shape[1] == 3
    for step in range(4):
        gray = _gray(x) if rgb else x
        candidates = torch.stack([
            (x * f[0]).clamp(0, 1),
            _blend(x, gray.mean((-3, -2, -1), keepdim=True), f[1]),
            _blend(x, gray, f[2]) if rgb else x,
            _shift_hue(x, f[3]) if rgb else x,
        ])
        x = candidates[order[:, step], torch.arange(batch, device=device)]
    return x


def cutout(images: torch.Tensor, generator: torch.Generator, fraction: float = CUTOUT_FRACTION) -> torch.Tensor:
    """One square hole per image, of side s = fraction * min(H, W) (112 at 224 px), centred at a
    uniformly drawn pixel (y, x) and cut off at the borders (rows y - s/2 .. y + s/2 - 1, as the
    reference's Cutout), filled with the ImageNet mean colour (one-channel images: its mean)."""
    batch, channels, height, width = images.shape
    side = int(fraction * min(height, width))
    centre = torch.stack([torch.randint(0, n, (batch,), generator=generator, device=images.device)
                          for n in (height, width)])
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    inside_rows = (rows >= centre[0, :, None] - side // 2) & (rows < centre[0, :, None] + side - side // 2)
    inside_cols = (cols >= centre[1, :, None] - side // 2) & (cols < centre[1, :, None] + side - side // 2)
    hole = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]
    fill = torch.tensor(CUTOUT_FILL, device=images.device, dtype=images.dtype)
    fill = (fill if channels == 3 else fill.mean().expand(channels)).view(1, channels, 1, 1)
    return torch.where(hole, fill, images)


def flip_jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return color_jitter(random_flip(images, generator), generator)


AUGMENTS: dict[str, Augment] = {
    "none": no_augment,
    "crop": random_crop,  # digits (SVHN): a flipped digit is another digit
    "crop_flip": crop_flip,
    "crop_flip_rotate": crop_flip_rotate,
    "flip_jitter": flip_jitter,
    "cutout": cutout,
    "crop_flip_rotate15": functools.partial(crop_flip_rotate, max_degrees=15.0),
}


def make_augment(name: str) -> Augment:
    """The augmentation called ``name``."""
    return lookup("augmentation", name, AUGMENTS)

"""Corrupted test images: synthetic corruptions made on the device, and the released CIFAR-10-C /
CIFAR-100-C files (Hendrycks & Dietterich, "Benchmarking neural network robustness to common
corruptions and perturbations", ICLR 2019).

**Synthetic corruptions** (``corruptions=synthetic``, every dataset): written here from the
published formulas of the CIFAR-10-C construction, with its severity constants where it has
them; they are *synthetic corruptions of this tool*, not CIFAR-10-C or MNIST-C. Each is
``corrupt(images, severity, generator) -> images`` on uint8 images (B, C, H, W), severity
1..5, every random draw from ``generator`` (on the images' device); the arithmetic runs on
x = images / 255 in [0, 1], the result is clipped to [0, 1] and rounded back to uint8, so the
corrupted images take the trainer's test path unchanged. The CIFAR-10-C code converts back with
``np.uint8``, which truncates, so its values lie up to one grey level below these rounded ones
(pixelate and JPEG stay on uint8 grey levels, as PIL does there). ``SYNTHETIC`` maps the name
to (group, function); the groups are those of the paper (noise, blur, weather, digital).

**Released files** (``corruptions=cifar10-c`` / ``cifar100-c``, the 15 standard corruptions;
``cifar10-c-all`` / ``cifar100-c-all`` add the 4 extra ones): ``<data root>/CIFAR-10-C/<name>.npy``
(or ``CIFAR-100-C``), uint8 (50000, 32, 32, 3), five severities of the 10,000 test images in
order, and ``labels.npy`` (50000,). Read with ``allow_pickle=False``; shapes checked before a
trial trains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from drainage_bench.catalog import CORRUPTION_GROUPS as GROUPS
from drainage_bench.errors import UserError, did_you_mean

SEVERITIES = (1, 2, 3, 4, 5)
Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def _unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _level(constants: tuple, severity: int):
    if severity not in SEVERITIES:
        raise UserError(f"severity {severity} is invalid; valid: 1..5")
    return constants[severity - 1]


# --- noise ------------------------------------------------------------------------------------

def gaussian_noise(images, severity, generator):
    """x + N(0, c^2), c = (0.04, 0.06, 0.08, 0.09, 0.10) (CIFAR-10-C)."""
    c = _level((0.04, 0.06, 0.08, 0.09, 0.10), severity)
    x = _unit(images)
    return _uint8(x + c * torch.randn(x.shape, generator=generator, device=x.device))


def shot_noise(images, severity, generator):
    """Poisson(c x) / c, c = (500, 250, 100, 75, 50) (CIFAR-10-C)."""
    c = _level((500, 250, 100, 75, 50), severity)
    x = _unit(images)
    return _uint8(torch.poisson(x * c, generator=generator) / c)


def impulse_noise(images, severity, generator):
    """Salt and pepper: a share c of the values (per pixel and channel) set to 0 or 1 (1/2 each),
    c = (0.01, 0.02, 0.03, 0.05, 0.07) (CIFAR-10-C, skimage's ``s&p`` mode)."""
    c = _level((0.01, 0.02, 0.03, 0.05, 0.07), severity)
    x = _unit(images)
    hit = torch.rand(x.shape, generator=generator, device=x.device) < c
    salt = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
    return _uint8(torch.where(hit, salt.float(), x))


def speckle_noise(images, severity, generator):
    """x + x N(0, c^2), c = (0.06, 0.10, 0.12, 0.16, 0.20) (CIFAR-10-C extra)."""
    c = _level((0.06, 0.10, 0.12, 0.16, 0.20), severity)
    x = _unit(images)
    return _uint8(x + x * c * torch.randn(x.shape, generator=generator, device=x.device))


# --- blur -------------------------------------------------------------------------------------

def _filter(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Each channel convolved with a square 2-D kernel, the borders padded by ``F.pad`` ``mode``:
    "replicate" (scipy/skimage mode "nearest") or "reflect" (about the edge pixel: cv2's default
    BORDER_REFLECT_101, scipy's "mirror"; replicated where the pad exceeds the image)."""
    k = kernel.shape[-1]
    channels = x.shape[1]
    pad = k // 2
    if mode == "reflect" and pad >= min(x.shape[-2:]):
        mode = "replicate"
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    weight = kernel.to(x)[None, None].expand(channels, 1, k, k)
    return F.conv2d(padded, weight, groups=channels)


def _gaussian_kernel(sigma: float, radius: int | None = None) -> torch.Tensor:
    radius = radius if radius is not None else max(1, int(4 * sigma + 0.5))  # scipy's truncate=4
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-r.square() / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def gaussian_blur(images, severity, generator):
    """Gaussian filter of standard deviation c px, c = (0.4, 0.6, 0.7, 0.8, 1.0) (CIFAR-10-C extra:
    skimage.filters.gaussian with its defaults, i.e. scipy.ndimage.gaussian_filter with kernel
    radius int(4 sigma + 0.5) and border mode "nearest", the edge pixel replicated)."""
    c = _level((0.4, 0.6, 0.7, 0.8, 1.0), severity)
    return _uint8(_filter(_unit(images), _gaussian_kernel(c), "replicate"))


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The defocus kernel of CIFAR-10-C: the disk X^2 + Y^2 <= radius^2 on the integer grid,
    normalised to sum 1, then smoothed by a 3x3 Gaussian of std ``alias_blur`` (zero outside)."""
    half = math.ceil(radius) + 1
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius ** 2).double()
    disk = disk / disk.sum()
    smooth = _gaussian_kernel(alias_blur, radius=1).double()
    out = F.conv2d(disk[None, None], smooth[None, None], padding=1)[0, 0]
    return (out / out.sum()).float()


def defocus_blur(images, severity, generator):
    """Convolution with `disk_kernel` (radius, alias_blur) = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6),
    (1, 0.2), (1.5, 0.1)) (CIFAR-10-C: cv2.filter2D, borders reflected about the edge pixel)."""
    radius, alias = _level(((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)), severity)
    return _uint8(_filter(_unit(images), disk_kernel(radius, alias), "reflect"))


# --- weather ----------------------------------------------------------------------------------

def brightness(images, severity, generator):
    """HSV value channel + c, clipped to 1, c = (0.05, 0.1, 0.15, 0.2, 0.3) (CIFAR-10-C).

    With hue and saturation kept, RGB scales with V = max(R, G, B): rgb' = rgb V' / V,
    V' = min(V + c, 1); a black pixel (V = 0, S = 0) becomes grey c. Grey images: x' = min(x + c, 1).
    """
    c = _level((0.05, 0.1, 0.15, 0.2, 0.3), severity)
    x = _unit(images)
    v = x.amax(1, keepdim=True)
    v_new = (v + c).clamp(max=1.0)
    scaled = x * (v_new / v.clamp(min=1e-12))
    return _uint8(torch.where(v > 0, scaled, v_new.expand_as(x)))


def _plasma(batch: int, size: int, decay: float, generator: torch.Generator, device) -> torch.Tensor:
    """Diamond-square fractal in [0, 1] (B, size, size), size a power of two, wrapping at the edges,
    min-max normalised per map. Level k = 0, 1, ... (grid 2^k -> 2^(k+1)) adds uniform noise in
    [-a_k, a_k] to its square and diamond means, a_k = w_k^2, w_k = 100 decay^-k: CIFAR-10-C's
    ``plasma_fractal`` adds ``wibble * uniform(-wibble, wibble)`` and divides wibble by decay
    per level, so the amplitude falls by decay^2 per level (only that ratio survives the
    normalisation)."""
    maps = torch.zeros(batch, 1, 1, device=device)
    wibble = 100.0
    while maps.shape[-1] < size:
        n = maps.shape[-1]
        scale = wibble * wibble
        wibble /= decay
        # square step: each new cell centre is the mean of its 4 corners plus noise
        corners = (maps + maps.roll(-1, 1) + maps.roll(-1, 2) + maps.roll((-1, -1), (1, 2))) / 4
        centres = corners + scale * (2 * torch.rand(batch, n, n, generator=generator, device=device) - 1)
        # diamond step: edge midpoints from their two neighbours in each direction
        down = (maps + maps.roll(-1, 1) + centres + centres.roll(1, 2)) / 4
        down = down + scale * (2 * torch.rand(batch, n, n, generator=generator, device=device) - 1)
        right = (maps + maps.roll(-1, 2) + centres + centres.roll(1, 1)) / 4
        right = right + scale * (2 * torch.rand(batch, n, n, generator=generator, device=device) - 1)
        out = torch.empty(batch, 2 * n, 2 * n, device=device)
        out[:, 0::2, 0::2], out[:, 1::2, 1::2] = maps, centres
        out[:, 1::2, 0::2], out[:, 0::2, 1::2] = down, right
        maps = out
    low = maps.amin((1, 2), keepdim=True)
    high = maps.amax((1, 2), keepdim=True)
    return (maps - low) / (high - low).clamp(min=1e-12)


def fog(images, severity, generator):
    """x + c0 plasma(decay c1), then x max(x) / (max(x) + c0), (c0, c1) = ((0.2, 3), (0.5, 3),
    (0.75, 2.5), (1, 2), (1.5, 1.75)) (CIFAR-10-C; the fractal is generated here on a
    power-of-two grid and cropped to the image)."""
    c0, c1 = _level(((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)), severity)
    x = _unit(images)
    h, w = x.shape[-2:]
    size = 2 ** math.ceil(math.log2(max(h, w)))
    plasma = _plasma(x.shape[0], size, c1, generator, x.device)[:, None, :h, :w]
    peak = x.amax((1, 2, 3), keepdim=True)
    return _uint8((x + c0 * plasma) * peak / (peak + c0))


# --- digital ----------------------------------------------------------------------------------

def contrast(images, severity, generator):
    """(x - m) c + m, m the per-image per-channel mean, c = (0.75, 0.5, 0.4, 0.3, 0.15) (CIFAR-10-C)."""
    c = _level((0.75, 0.5, 0.4, 0.3, 0.15), severity)
    x = _unit(images)
    m = x.mean((2, 3), keepdim=True)
    return _uint8((x - m) * c + m)


def _box_weights(size: int, out: int, device) -> torch.Tensor:
    """PIL's BOX resampling down from ``size`` to ``out`` <= size pixels as an (out, size) matrix:
    with s = size / out, output pixel i is the mean of the input pixels x whose centres lie in
    its box, -1/2 < (x + 0.5 - (i + 0.5) s) / s <= 1/2 (PIL's box filter is 1 there, 0 elsewhere:
    whole pixels, no partial weights)."""
    s = size / out
    centre = (torch.arange(out, dtype=torch.float64) + 0.5) * s
    d = (torch.arange(size, dtype=torch.float64)[None, :] + 0.5 - centre[:, None]) * (1.0 / s)
    inside = ((d > -0.5) & (d <= 0.5)).double()
    return (inside / inside.sum(1, keepdim=True)).float().to(device)


def pixelate(images, severity, generator):
    """Down to int(c side) and back up, both with PIL's BOX filter, c = (0.95, 0.9, 0.85, 0.75,
    0.65) (CIFAR-10-C: ``resize((int(32 c),) * 2, BOX)`` then ``resize((32, 32), BOX)``).

    Down: W_h x W_w^T with the `_box_weights` matrices, on grey levels rounded half up to integers
    after the horizontal and after the vertical pass, as PIL's uint8 passes do. Up: BOX
    up-sampling takes input pixel floor((i + 0.5) side_in / side_out), which is
    ``F.interpolate(mode="nearest-exact")``.
    """
    c = _level((0.95, 0.9, 0.85, 0.75, 0.65), severity)
    h, w = images.shape[-2:]
    rows = _box_weights(h, max(1, int(h * c)), images.device)
    cols = _box_weights(w, max(1, int(w * c)), images.device)
    wide = torch.floor(images.float() @ cols.T + 0.5)
    small = torch.floor(rows @ wide + 0.5)
    return F.interpolate(small, size=(h, w), mode="nearest-exact").to(torch.uint8)


def jpeg_compression(images, severity, generator):
    """JPEG encoding at quality c = (80, 65, 58, 50, 40) (CIFAR-10-C) with torchvision's encoder."""
    from torchvision.io import decode_jpeg, encode_jpeg

    quality = _level((80, 65, 58, 50, 40), severity)
    cpu = list(images.cpu())
    encoded = encode_jpeg(cpu, quality=quality)
    decoded = decode_jpeg(encoded, mode=_read_mode(images.shape[1]))
    return torch.stack(decoded).to(images.device)


def _read_mode(channels: int):
    from torchvision.io import ImageReadMode

    return ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB


SYNTHETIC: dict[str, tuple[str, Corruption]] = {
    "gaussian_noise": ("noise", gaussian_noise),
    "shot_noise": ("noise", shot_noise),
    "impulse_noise": ("noise", impulse_noise),
    "speckle_noise": ("noise", speckle_noise),
    "gaussian_blur": ("blur", gaussian_blur),
    "defocus_blur": ("blur", defocus_blur),
    "brightness": ("weather", brightness),
    "fog": ("weather", fog),
    "contrast": ("digital", contrast),
    "pixelate": ("digital", pixelate),
    "jpeg_compression": ("digital", jpeg_compression),
}

# The released sets: name -> group, in the paper's order (15 standard, then the 4 extra).
CIFAR_C_STANDARD = {
    "gaussian_noise": "noise", "shot_noise": "noise", "impulse_noise": "noise",
    "defocus_blur": "blur", "glass_blur": "blur", "motion_blur": "blur", "zoom_blur": "blur",
    "snow": "weather", "frost": "weather", "fog": "weather", "brightness": "weather",
    "contrast": "digital", "elastic_transform": "digital", "pixelate": "digital", "jpeg_compression": "digital",
}
CIFAR_C_EXTRA = {"speckle_noise": "noise", "gaussian_blur": "blur", "spatter": "weather", "saturate": "digital"}


@dataclass(frozen=True)
class ReleasedSet:
    folder: str
    datasets: tuple[str, ...]
    num_classes: int
    extra: bool = False

    @property
    def names(self) -> dict[str, str]:
        return {**CIFAR_C_STANDARD, **(CIFAR_C_EXTRA if self.extra else {})}


RELEASED: dict[str, ReleasedSet] = {
    "cifar10-c": ReleasedSet("CIFAR-10-C", ("cifar10", "cifar10n"), 10),
    "cifar10-c-all": ReleasedSet("CIFAR-10-C", ("cifar10", "cifar10n"), 10, extra=True),
    "cifar100-c": ReleasedSet("CIFAR-100-C", ("cifar100", "cifar100n"), 100),
    "cifar100-c-all": ReleasedSet("CIFAR-100-C", ("cifar100", "cifar100n"), 100, extra=True),
}
CORRUPTION_SETS = ("synthetic", *RELEASED)
RELEASED_IMAGES = 10_000  # test images per severity


def validate_corruptions(value: str, dataset: str) -> None:
    """A TrialConfig check (no files read): a known set, and a released set only for its dataset."""
    if value == "":
        return
    if value not in CORRUPTION_SETS:
        raise UserError(f"corruptions={value!r} is invalid; {did_you_mean(value, CORRUPTION_SETS)} (or empty: none)")
    if value in RELEASED and dataset not in RELEASED[value].datasets:
        raise UserError(f"corruptions={value!r} is for {', '.join(RELEASED[value].datasets)}, not {dataset}; "
                        "use corruptions=synthetic")


def released_files(name: str, root: Path) -> dict[str, Path]:
    """Check a released folder before training: every corruption file and ``labels.npy`` there,
    uint8 (5n, 32, 32, 3) and labels (5n,) integers within the classes (n = 10,000 in the
    release; a smaller n with the same layout is read alike). Returns name -> path."""
    spec = RELEASED[name]
    folder = Path(root) / spec.folder
    labels = folder / "labels.npy"
    if not labels.is_file():
        raise UserError(f"corruptions={name}: {labels} is missing; put the released {spec.folder} files "
                        f"(<corruption>.npy and labels.npy) under the data root")
    y = _open_npy(labels)
    if y.ndim != 1 or not y.size or y.size % len(SEVERITIES) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"corruptions={name}: {labels} holds {y.dtype} {y.shape}, expected integers of shape "
                        f"({len(SEVERITIES) * RELEASED_IMAGES},): five severities of the test images")
    expected = (y.size, 32, 32, 3)
    if y.size and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        raise UserError(f"corruptions={name}: {labels} has labels outside 0..{spec.num_classes - 1}")
    files = {}
    for corruption in spec.names:
        path = folder / f"{corruption}.npy"
        if not path.is_file():
            raise UserError(f"corruptions={name}: {path} is missing (use {name.removesuffix('-all')} for the "
                            "15 standard corruptions only)" if corruption in CIFAR_C_EXTRA else
                            f"corruptions={name}: {path} is missing")
        x = _open_npy(path)
        if x.shape != expected or x.dtype != np.uint8:
            raise UserError(f"corruptions={name}: {path} holds {x.dtype} {x.shape}, expected uint8 {expected}")
        files[corruption] = path
    return files


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


@dataclass
class CorruptedBatches:
    """One (corruption, severity) cell: its group and a function yielding (images, labels) batches."""

    corruption: str
    group: str
    severity: int
    batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def cells(config, test_images: torch.Tensor, test_labels: torch.Tensor, root: Path,
          device: torch.device) -> Iterator[CorruptedBatches]:
    """Every (corruption, severity) of the trial's ``corruptions`` setting, in order.

    Synthetic: the first ``corruption_images`` test images (0: all), corrupted batch by batch,
    each cell from its own generator seeded by (trial seed, corruption index, severity).
    Released: the file's images of the severity (10,000; the first ``corruption_images``).
    """
    limit = config.corruption_images or None
    if config.corruptions == "synthetic":
        images, labels = test_images[:limit], test_labels[:limit]
        for index, (name, (group, corrupt)) in enumerate(SYNTHETIC.items()):
            for severity in SEVERITIES:
                seed = 1_000_003 * (config.seed + 1) + 101 * index + severity

                def batches(size, corrupt=corrupt, severity=severity, seed=seed):
                    generator = torch.Generator(device=device).manual_seed(seed)
                    for start in range(0, len(labels), size):
                        x = images[start:start + size].to(device)
                        yield corrupt(x, severity, generator), labels[start:start + size].to(device)

                yield CorruptedBatches(name, group, severity, batches)
        return
    spec = RELEASED[config.corruptions]
    files = released_files(config.corruptions, root)
    all_labels = torch.from_numpy(np.asarray(_open_npy(Path(root) / spec.folder / "labels.npy"), dtype=np.int64))
    per_severity = len(all_labels) // len(SEVERITIES)
    for name, path in files.items():
        array = _open_npy(path)
        for severity in SEVERITIES:
            lo = (severity - 1) * per_severity
            hi = lo + min(limit or per_severity, per_severity)

            def batches(size, array=array, lo=lo, hi=hi):
                for start in range(lo, hi, size):
                    stop = min(hi, start + size)
                    x = torch.from_numpy(np.array(array[start:stop])).permute(0, 3, 1, 2)  # a copy of the mapped file
                    yield x.to(device), all_labels[start:stop].to(device)

            yield CorruptedBatches(name, spec.names[name], severity, batches)


def summarize(rows: list[dict]) -> dict[str, float]:
    """Mean error, NLL and ECE over all (corruption, severity) cells, and per group:
    ``corruption_error``, ``corruption_nll``, ``corruption_ece``, ``corruption_error_<group>``, ..."""
    out: dict[str, float] = {}
    if not rows:
        return out
    for key in ("error", "nll", "ece"):
        out[f"corruption_{key}"] = float(np.mean([r[key] for r in rows]))
        for group in GROUPS:
            values = [r[key] for r in rows if r["group"] == group]
            out[f"corruption_{key}_{group}"] = float(np.mean(values)) if values else math.nan
    return out

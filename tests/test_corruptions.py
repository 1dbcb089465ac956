"""Synthetic corruptions (shape, range, seeds, severity, hand/independent formulas) and the
released CIFAR-10-C reader on a tiny generated folder."""
import colorsys
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch

from drainage_bench.errors import UserError
from drainage_bench.trainer import corruptions as C


def structured_images(channels: int = 3, side: int = 28, batch: int = 6) -> torch.Tensor:
    """Smooth gradients with a bright square: images with edges and flat parts, uint8 in 40..215."""
    gen = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, side)
    base = (ramp[None, :] * ramp[:, None])[None, None].expand(batch, channels, side, side).clone()
    base[:, :, side // 4: side // 2, side // 3: 2 * side // 3] += 0.5
    base = base + 0.1 * torch.rand(batch, channels, 1, 1, generator=gen)
    return (40 + 175 * base / base.amax()).round().to(torch.uint8)


def mean_abs_change(out: torch.Tensor, x: torch.Tensor) -> float:
    return float((out.float() - x.float()).abs().mean())


def repeated_columns(out: torch.Tensor, x: torch.Tensor) -> float:
    """Share of columns equal to their left neighbour: up-sampling from a coarser grid repeats columns."""
    return float((out[..., 1:] == out[..., :-1]).all(-2).float().mean())


DISTORTION = {"pixelate": repeated_columns}  # the mean change of a pixelation aliases with the image


@pytest.mark.parametrize("name", list(C.SYNTHETIC))
@pytest.mark.parametrize("channels", [1, 3])
def test_each_corruption_keeps_shape_and_dtype_repeats_per_seed_and_grows_with_severity(name, channels) -> None:
    group, corrupt = C.SYNTHETIC[name]
    assert group in C.GROUPS
    x = structured_images(channels)
    distortion = []
    for severity in C.SEVERITIES:
        out = corrupt(x, severity, torch.Generator().manual_seed(7))
        again = corrupt(x, severity, torch.Generator().manual_seed(7))
        assert out.shape == x.shape and out.dtype == torch.uint8
        assert torch.equal(out, again)
        distortion.append(DISTORTION.get(name, mean_abs_change)(out, x))
    # monotone up to rounding noise, and clearly larger at severity 5 than at 1
    assert all(b >= a - 0.05 for a, b in zip(distortion, distortion[1:])), distortion
    assert distortion[-1] > distortion[0], distortion


def test_random_corruptions_differ_between_seeds() -> None:
    x = structured_images()
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "fog"):
        _, corrupt = C.SYNTHETIC[name]
        a = corrupt(x, 3, torch.Generator().manual_seed(1))
        b = corrupt(x, 3, torch.Generator().manual_seed(2))
        assert not torch.equal(a, b), name


def test_contrast_by_hand() -> None:
    # two pixels 0 and 200 (mean 100); severity 2 (c = 0.5): 100 -+ 50 -> 50 and 150
    x = torch.tensor([0, 200], dtype=torch.uint8).view(1, 1, 1, 2)
    assert C.contrast(x, 2, torch.Generator()).flatten().tolist() == [50, 150]


def test_brightness_matches_the_hsv_round_trip() -> None:
    rgb = torch.tensor([[10, 200, 60], [0, 0, 0], [250, 240, 100], [30, 30, 30]], dtype=torch.uint8)
    x = rgb.T.reshape(1, 3, 1, 4)
    out = C.brightness(x, 3, torch.Generator())  # c = 0.15
    for i, pixel in enumerate(rgb.tolist()):
        h, s, v = colorsys.rgb_to_hsv(*(p / 255 for p in pixel))
        expected = [round(255 * q) for q in colorsys.hsv_to_rgb(h, s, min(1.0, v + 0.15))]
        assert out[0, :, 0, i].tolist() == pytest.approx(expected, abs=1), pixel


def test_gaussian_blur_matches_scipy_with_nearest_borders() -> None:
    # the reference's skimage.filters.gaussian: scipy.ndimage.gaussian_filter, mode "nearest", truncate 4
    noisy = torch.randint(0, 256, (4, 3, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = torch.cat([noisy, structured_images(3)])
    for severity, sigma in zip(C.SEVERITIES, (0.4, 0.6, 0.7, 0.8, 1.0)):
        ours = C.gaussian_blur(x, severity, torch.Generator()).numpy().astype(int)
        theirs = scipy.ndimage.gaussian_filter(x.numpy() / 255, sigma=(0, 0, sigma, sigma), mode="nearest",
                                               truncate=4.0)
        theirs = np.round(np.clip(theirs, 0, 1) * 255).astype(int)
        assert np.abs(ours - theirs).max() <= 1, severity  # float32 against float64 at .5
        assert (ours == theirs).mean() > 0.99, severity


def test_defocus_blur_matches_scipy_with_borders_reflected_about_the_edge_pixel() -> None:
    # cv2.filter2D's default BORDER_REFLECT_101 is scipy's "mirror"; a replicated border differs here
    noisy = torch.randint(0, 256, (4, 3, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = torch.cat([noisy, structured_images(3)])
    for severity, (radius, alias) in zip(C.SEVERITIES, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))):
        ours = C.defocus_blur(x, severity, torch.Generator()).numpy().astype(int)
        kernel = C.disk_kernel(radius, alias).numpy()[None, None]
        theirs = scipy.ndimage.convolve(x.numpy() / 255, kernel, mode="mirror")
        theirs = np.round(np.clip(theirs, 0, 1) * 255).astype(int)
        assert np.abs(ours - theirs).max() <= 1, severity  # float32 against float64 at .5
        assert (ours == theirs).mean() > 0.99, severity
        nearest = np.round(np.clip(scipy.ndimage.convolve(x.numpy() / 255, kernel, mode="nearest"), 0, 1) * 255)
        assert (ours != nearest).any(), severity  # the test tells the two borders apart


def pil_pixelate(image: np.ndarray, c: float) -> np.ndarray:
    """The reference's pixelate on one (H, W) or (H, W, 3) uint8 image: PIL BOX down to int(side c),
    PIL BOX back up."""
    from PIL import Image

    box = Image.Resampling.BOX if hasattr(Image, "Resampling") else Image.BOX
    side = image.shape[0]
    small = Image.fromarray(image).resize((int(side * c), int(side * c)), box)
    return np.asarray(small.resize((side, side), box))


@pytest.mark.parametrize("channels, side", [(3, 32), (1, 28)])
def test_pixelate_matches_pil_box_down_and_up(channels, side) -> None:
    noisy = torch.randint(0, 256, (6, channels, side, side), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    x = torch.cat([noisy, structured_images(channels, side)])
    images = x.permute(0, 2, 3, 1).numpy()
    for severity, c in zip(C.SEVERITIES, (0.95, 0.9, 0.85, 0.75, 0.65)):
        ours = C.pixelate(x, severity, torch.Generator()).permute(0, 2, 3, 1).numpy().astype(int)
        theirs = np.stack([pil_pixelate(image[..., 0] if channels == 1 else image, c) for image in images])
        theirs = theirs.reshape(ours.shape).astype(int)
        np.testing.assert_array_equal(ours, theirs, err_msg=f"severity {severity}")  # PIL's roundings too


def reference_plasma(rng: np.random.Generator, size: int, decay: float, power: float = 2.0) -> np.ndarray:
    """Diamond-square on a size x size torus (size a power of two), written from the algorithm: the
    map starts as one corner value 0; for step = size, size/2, ..., 2 (h = step/2) the square step
    sets each square's centre (i + h, j + h) to the mean of its 4 corners plus noise, then the
    diamond step sets each edge midpoint to the mean of its 2 corners and the 2 centres beside it
    plus noise; the noise is uniform in [-a, a], a divided by decay^power after each step (the
    reference's wibble * uniform(-wibble, wibble), wibble / decay: power 2). Min-max normalised."""
    m = np.zeros((size, size))
    a, step = 1.0, size
    while step >= 2:
        h = step // 2
        for i in range(0, size, step):
            for j in range(0, size, step):
                i1, j1 = (i + step) % size, (j + step) % size
                m[i + h, j + h] = (m[i, j] + m[i1, j] + m[i, j1] + m[i1, j1]) / 4 + a * rng.uniform(-1, 1)
        for i in range(0, size, step):
            for j in range(0, size, step):
                i1, j1 = (i + step) % size, (j + step) % size
                m[i, j + h] = (m[i, j] + m[i, j1] + m[(i - h) % size, j + h] + m[i + h, j + h]) / 4 \
                    + a * rng.uniform(-1, 1)
                m[i + h, j] = (m[i, j] + m[i1, j] + m[i + h, (j - h) % size] + m[i + h, j + h]) / 4 \
                    + a * rng.uniform(-1, 1)
        a /= decay ** power
        step //= 2
    m -= m.min()
    return m / m.max()


def roughness(maps: np.ndarray) -> float:
    """Mean |horizontal neighbour difference| of normalised maps (..., H, W)."""
    return float(np.abs(np.diff(maps, axis=-1)).mean())


TOLERANCE = 0.15  # the mean roughness of 100 maps has a standard error near 3% (the two means' gap 4%)


@pytest.mark.parametrize("decay", [3.0, 2.5, 2.0, 1.75])
def test_fog_fractal_is_as_rough_as_the_reference(decay) -> None:
    maps = 100
    rng = np.random.default_rng(0)
    expected = roughness(np.stack([reference_plasma(rng, 32, decay) for _ in range(maps)]))
    ours = roughness(C._plasma(maps, 32, decay, torch.Generator().manual_seed(0), "cpu").numpy())
    assert ours == pytest.approx(expected, rel=TOLERANCE), (ours, expected)
    # the tolerance tells the amplitude ratio decay^2 from decay (the old, rougher fog)
    rougher = roughness(np.stack([reference_plasma(rng, 32, decay, power=1.0) for _ in range(maps)]))
    assert rougher > (1 + 2 * TOLERANCE) * expected, (rougher, expected)


def test_disk_kernel_by_hand() -> None:
    # radius 1: the 5 points with X^2 + Y^2 <= 1 (a plus), each 1/5 before the alias blur
    k = C.disk_kernel(1.0, 1e-3)  # a vanishing alias blur leaves the plus
    assert k.shape == (5, 5)
    plus = torch.zeros(5, 5)
    plus[2, 1:4] = plus[1:4, 2] = 0.2
    assert torch.allclose(k, plus, atol=1e-6)


def test_impulse_noise_hits_its_share_of_values() -> None:
    x = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8)
    out = C.impulse_noise(x, 5, torch.Generator().manual_seed(0))  # c = 0.07
    changed = (out != 128).float().mean()
    assert float(changed) == pytest.approx(0.07, abs=0.005)
    assert set(out[out != 128].unique().tolist()) == {0, 255}


def test_shot_noise_has_the_poisson_variance() -> None:
    # Poisson(c x) / c has variance x / c: at x = 0.5, c = 50 (severity 5) std = 0.1 -> 25.5 grey levels
    x = torch.full((8, 1, 64, 64), 128, dtype=torch.uint8)
    out = C.shot_noise(x, 5, torch.Generator().manual_seed(0)).float()
    assert float(out.std()) == pytest.approx(255 * (128 / 255 / 50) ** 0.5, rel=0.05)


# --- the released files ------------------------------------------------------------------------

def write_fake_cifar_c(root: Path, per_severity: int = 4, names=None, shape=None, labels=True) -> Path:
    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = 5 * per_severity
    if labels:
        np.save(folder / "labels.npy", (np.arange(n) % 10).astype(np.uint8))  # differ per severity
    for name in names or C.CIFAR_C_STANDARD:
        np.save(folder / f"{name}.npy", rng.integers(0, 256, shape or (n, 32, 32, 3), dtype=np.uint8))
    return folder


def test_released_cells_read_each_severity_in_order(tmp_path: Path) -> None:
    folder = write_fake_cifar_c(tmp_path)
    from drainage_bench.config import TrialConfig

    config = TrialConfig.__new__(TrialConfig)  # only the fields cells() reads
    object.__setattr__(config, "corruptions", "cifar10-c")
    object.__setattr__(config, "corruption_images", 0)
    object.__setattr__(config, "seed", 0)
    cells = list(C.cells(config, None, None, tmp_path, torch.device("cpu")))
    assert [(c.corruption, c.severity) for c in cells[:6]] == [("gaussian_noise", s) for s in range(1, 6)] + [
        ("shot_noise", 1)]
    assert len(cells) == 15 * 5
    fog3 = next(c for c in cells if (c.corruption, c.severity) == ("fog", 3))
    assert fog3.group == "weather"
    (images, labels), = list(fog3.batches(100))
    raw = np.load(folder / "fog.npy")[8:12]  # severity 3 = images 8..11 of 4 per severity
    assert torch.equal(images, torch.from_numpy(raw).permute(0, 3, 1, 2))
    assert labels.tolist() == [8, 9, 0, 1]


def test_released_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="labels.npy is missing"):
        write_fake_cifar_c(tmp_path / "a", labels=False)
        C.released_files("cifar10-c", tmp_path / "a")
    write_fake_cifar_c(tmp_path / "b", names=["gaussian_noise"], shape=(20, 32, 32, 1))
    with pytest.raises(UserError, match=r"gaussian_noise.npy holds uint8 \(20, 32, 32, 1\), expected uint8 \(20, 32, 32, 3\)"):
        C.released_files("cifar10-c", tmp_path / "b")
    write_fake_cifar_c(tmp_path / "c")
    with pytest.raises(UserError, match="speckle_noise.npy is missing"):
        C.released_files("cifar10-c-all", tmp_path / "c")


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drainage_bench.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("case, needle", [
    ("shape", "expected uint8"), ("labels", "labels.npy is missing"),
    ("role", "unknown role 'smudge'"), ("beta", "mollify_beta=-1.0 is invalid"),
    ("corruption", "corruptions='snowstorm' is invalid")])
def test_bad_input_through_the_cli_is_one_line_exit_2_nothing_written(tmp_path: Path, case, needle) -> None:
    from test_data import write_fake_cifar

    root = tmp_path / "data"
    write_fake_cifar(root, "cifar-10-batches-py", {**{f"data_batch_{i}": 4 for i in range(1, 6)}, "test_batch": 4},
                     b"labels", 10)
    write_fake_cifar(root, "cifar-10-batches-py", {"batches.meta": 0}, b"labels", 10) if False else None
    if case == "shape":
        write_fake_cifar_c(root, shape=(20, 28, 28, 3))
    elif case == "labels":
        write_fake_cifar_c(root, labels=False)
    sets = {"shape": ["corruptions=cifar10-c"], "labels": ["corruptions=cifar10-c"],
            "role": ["mollify=true", "mollify_roles=clean,smudge"], "beta": ["mollify=true", "mollify_beta=-1"],
            "corruption": ["corruptions=snowstorm"]}[case]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    results = tmp_path / "results"
    args = ["train", "--dataset", "cifar10", "--epochs", "1", "--data-root", str(root), "--results", str(results)]
    for item in sets:
        args += ["--set", item]
    out = run_cli(*args, env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert needle in out.stdout + out.stderr
    assert len((out.stdout + out.stderr).strip().splitlines()) == 1
    assert not results.exists() or not any(results.rglob("*.parquet"))

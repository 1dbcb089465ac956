"""Tests for drainage_bench.trainer.augment: crops, flips and rotations checked per sample."""
import pytest
import torch
import torch.nn.functional as F

from drainage_bench.errors import UserError
from drainage_bench.trainer.augment import (
    AUGMENTS,
    crop_at,
    make_augment,
    random_angles,
    random_crop,
    random_flip,
    rotate,
)


def images(batch=64, channels=3, size=8, seed=0) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def crop_offsets(original: torch.Tensor, cropped: torch.Tensor, padding: int = 4) -> list[tuple[int, int]]:
    """For each sample, the unique (top, left) whose slice of the padded original equals the output."""
    height, width = original.shape[-2:]
    found = []
    for x, y in zip(original, cropped):
        padded = torch.zeros(x.shape[0], height + 2 * padding, width + 2 * padding)
        padded[:, padding : padding + height, padding : padding + width] = x
        matches = [
            (top, left)
            for top in range(2 * padding + 1)
            for left in range(2 * padding + 1)
            if torch.equal(padded[:, top : top + height, left : left + width], y)
        ]
        assert len(matches) == 1
        found.append(matches[0])
    return found


def test_crop_at_equals_per_sample_slices_of_the_padded_image():
    x = images(batch=4)
    top, left = torch.tensor([0, 8, 3, 4]), torch.tensor([8, 0, 5, 4])
    out = crop_at(x, top, left, padding=4)
    padded = F.pad(x, (4, 4, 4, 4))
    for b in range(4):
        t, s = int(top[b]), int(left[b])
        assert torch.equal(out[b], padded[b, :, t : t + 8, s : s + 8])
    assert torch.equal(out[3], x[3])  # offset (4, 4) is the original image
    assert torch.all(out[0][:, :, -4:] == 0) and torch.all(out[0][:, :4, :] == 0)  # shifted into padding


def test_random_crop_uses_per_sample_offsets_in_range():
    x = images()
    offsets = crop_offsets(x, random_crop(x, gen()))
    assert len(set(offsets)) > 30  # 64 samples over 81 possible offsets: not one shared shift
    assert {t for t, _ in offsets} == set(range(9)) and {s for _, s in offsets} == set(range(9))


def test_random_flip_mirrors_exactly_the_chosen_samples():
    x = images(batch=200)
    out = random_flip(x, gen())
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample is exactly one of the two
    assert 70 < sum(flipped) < 130  # p = 1/2


def test_crop_flip_gives_a_crop_of_the_image_or_of_its_mirror():
    x = images(batch=32)
    out = make_augment("crop_flip")(x, gen(5))
    mirrored = 0
    for xi, oi in zip(x, out):
        candidates = [xi, xi.flip(-1)]
        hits = [c for c in candidates if _is_some_crop(c, oi)]
        assert len(hits) == 1
        mirrored += hits[0] is candidates[1]
    assert 0 < mirrored < 32


def _is_some_crop(x: torch.Tensor, y: torch.Tensor, padding: int = 4) -> bool:
    padded = F.pad(x, (padding,) * 4)
    size = x.shape[-1]
    return any(
        torch.equal(padded[:, t : t + size, s : s + size], y)
        for t in range(2 * padding + 1)
        for s in range(2 * padding + 1)
    )


def test_rotate_by_right_angles_matches_rot90_and_zero_is_identity():
    x = images(batch=3, size=6)
    degrees = torch.tensor([0.0, 90.0, 180.0])
    out = rotate(x, degrees)
    torch.testing.assert_close(out[0], x[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], torch.rot90(x[1], 1, dims=(-2, -1)), atol=1e-5, rtol=0)  # counter-clockwise
    torch.testing.assert_close(out[2], x[2].flip(-1).flip(-2), atol=1e-5, rtol=0)


def test_rotate_keeps_angles_in_pixel_units_for_non_square_images():
    block = images(batch=1, channels=1, size=6)[0]
    x = torch.zeros(1, 1, 6, 10)
    x[..., 2:8] = block  # a 6x6 square centred in a 6x10 image
    out = rotate(x, torch.tensor([90.0]))
    expected = torch.zeros_like(x)
    expected[..., 2:8] = torch.rot90(block, 1, dims=(-2, -1))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_random_angles_are_uniform_in_plus_minus_20_degrees():
    angles = random_angles(20000, gen(), torch.device("cpu"))
    assert angles.min() >= -20 and angles.max() <= 20
    assert angles.min() < -19.9 and angles.max() > 19.9
    assert abs(angles.mean().item()) < 0.3  # std of the mean: 20/sqrt(3)/sqrt(20000) = 0.08
    assert ((angles > 10).float().mean().item()) == pytest.approx(0.25, abs=0.02)


def test_crop_flip_rotate_is_crop_flip_then_rotation_by_the_next_draws():
    x = images(batch=16)
    generator = gen(9)
    out = make_augment("crop_flip_rotate")(x, generator)
    replay = gen(9)
    expected = rotate(make_augment("crop_flip")(x, replay), random_angles(16, replay, x.device))
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert not torch.allclose(out, make_augment("crop_flip")(x, gen(9)))


def test_crop_flip_rotate15_rotates_by_at_most_15_degrees():
    x = images(batch=16)
    out = make_augment("crop_flip_rotate15")(x, gen(9))
    replay = gen(9)
    expected = rotate(make_augment("crop_flip")(x, replay), random_angles(16, replay, x.device, max_degrees=15.0))
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_same_seed_same_output(name):
    x = images()
    augment = make_augment(name)
    first, second = augment(x, gen(3)), augment(x, gen(3))
    assert torch.equal(first, second)
    if name != "none":
        assert not torch.equal(first, augment(x, gen(4)))


def test_none_is_identity():
    x = images()
    assert torch.equal(make_augment("none")(x, gen()), x)


def test_augment_keeps_shape_and_dtype():
    x = images(batch=5, channels=1, size=28).double()
    for name in AUGMENTS:
        out = make_augment(name)(x, gen())
        assert out.shape == x.shape and out.dtype == x.dtype


def test_unknown_augmentation_is_a_user_error():
    with pytest.raises(UserError, match="unknown augmentation 'mixup'; valid: crop, crop_flip, crop_flip_rotate, crop_flip_rotate15, cutout, flip_jitter, none"):
        make_augment("mixup")

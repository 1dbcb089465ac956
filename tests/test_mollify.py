"""Mollification: schedules at hand-computed points, the DCT, the heat blur, soft targets, losses."""
import math

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage
import torch

from drainage_bench.errors import UserError
from drainage_bench.trainer import mollify as M
from drainage_bench.trainer.losses import make_loss

T = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)


def test_noise_schedule_at_0_half_1() -> None:
    a, s = M.noise_schedule(T)
    # cos(0) = 1, cos(pi/4) = sqrt(2)/2, cos(pi/2) = 0; sin the other way round
    h = math.sqrt(2) / 2
    assert a.tolist() == pytest.approx([1.0, h, 0.0], abs=1e-12)
    assert s.tolist() == pytest.approx([0.0, h, 1.0], abs=1e-12)
    # gamma = sin^2(pi t / 2)^npow: 0, 1/2, 1; with npow 2: 0, 1/4, 1
    assert M.noise_gamma(T).tolist() == pytest.approx([0.0, 0.5, 1.0], abs=1e-12)
    assert M.noise_gamma(T, 2.0).tolist() == pytest.approx([0.0, 0.25, 1.0], abs=1e-12)


def test_blur_schedule_at_0_half_1() -> None:
    # sigma = 0.3^(1-t) R^t with R = 32: 0.3, sqrt(0.3 * 32) = sqrt(9.6), 32
    assert M.blur_sigma(T, 32).tolist() == pytest.approx([0.3, math.sqrt(9.6), 32.0], rel=1e-12)
    # gamma = t^bpow: 0, 0.5, 1; bpow 2: 0, 0.25, 1
    assert M.blur_gamma(T).tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert M.blur_gamma(T, 2.0).tolist() == pytest.approx([0.0, 0.25, 1.0])


def test_dct_matches_scipy_and_round_trips() -> None:
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = scipy.fft.dctn(x.numpy(), type=2, axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(M.dct2(x).numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(M.idct2(M.dct2(x)).numpy(), x.numpy(), atol=1e-12)
    x32 = x.float()
    assert (M.idct2(M.dct2(x32)) - x32).abs().max() < 1e-5  # float32 error only


def test_blur_with_vanishing_sigma_is_the_identity_and_constants_stay_constant() -> None:
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(M.heat_blur(x, torch.full((4,), 1e-4)), x, atol=1e-5)
    # a constant image has only the DC coefficient, and Lambda_00 = 0: it stays put at every t
    const = torch.full((3, 1, 16, 16), 0.37)
    for t in (0.0, 0.5, 1.0):
        out = M.heat_blur(const, M.blur_sigma(torch.full((3,), t), 16))
        assert torch.allclose(out, const, atol=1e-5)
    # a large sigma leaves (nearly) the mean: sigma = R = 16 damps frequency 1 by exp(-(pi/16)^2 128)
    blurred = M.heat_blur(x, torch.full((4,), 16.0))
    assert torch.allclose(blurred, x.mean((2, 3), keepdim=True).expand_as(x), atol=1e-3)


def _gaussian_reflect(image: np.ndarray, sigma: float) -> np.ndarray:
    """An independent blur of one (H, W) image: a sampled Gaussian, half-sample symmetric borders."""
    return scipy.ndimage.gaussian_filter(image, sigma, mode="reflect", truncate=12.0)


def _dct_heat(image: np.ndarray, sigma: float) -> np.ndarray:
    """The heat blur written out with scipy's orthonormal DCT: exp(-((pi k/H)^2 + (pi l/W)^2) sigma^2 / 2)."""
    h, w = image.shape
    lam = (np.pi * np.arange(h) / h)[:, None] ** 2 + (np.pi * np.arange(w) / w)[None, :] ** 2
    u = scipy.fft.dctn(image, type=2, norm="ortho")
    return scipy.fft.idctn(np.exp(-lam * sigma**2 / 2) * u, type=2, norm="ortho")


def test_heat_blur_is_a_gaussian_filter_with_reflected_borders_on_a_rectangle() -> None:
    # The DCT-II diagonalises convolution with the half-sample symmetric extension of the image;
    # a sampled Gaussian's response at frequency omega <= pi is exp(-omega^2 sigma^2 / 2) up to
    # aliasing from 2 pi - omega, at most exp(-pi^2 sigma^2 / 2) (5e-20 at sigma = 3, but 3e-9 at
    # sigma = 2), so heat for time sigma^2 / 2 equals scipy's Gaussian filter with mode="reflect"
    # (the kernel truncated at 12 sigma: a tail of ~1e-31).
    x = torch.randn(2, 3, 24, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    sigmas = torch.tensor([3.0, 4.5], dtype=torch.float64)
    out = M.heat_blur(x, sigmas).numpy()
    for b, sigma in enumerate(sigmas.tolist()):
        for c in range(3):
            np.testing.assert_allclose(out[b, c], _gaussian_reflect(x[b, c].numpy(), sigma), atol=1e-12)


def test_heat_blur_damps_a_single_cosine_by_its_heat_factor() -> None:
    # cos(pi k (i + 1/2) / H) cos(pi l (j + 1/2) / W) is one DCT-II basis image: it decays by exactly
    # exp(-((pi k / H)^2 + (pi l / W)^2) sigma^2 / 2) and keeps its shape
    h, w, sigma = 24, 40, 1.7
    i = np.arange(h)[:, None] + 0.5
    j = np.arange(w)[None, :] + 0.5
    for k, l in ((3, 0), (0, 5), (3, 5), (7, 2)):
        image = np.cos(np.pi * k * i / h) * np.cos(np.pi * l * j / w)
        factor = math.exp(-((math.pi * k / h) ** 2 + (math.pi * l / w) ** 2) * sigma**2 / 2)
        out = M.heat_blur(torch.from_numpy(image)[None, None], torch.tensor([sigma], dtype=torch.float64))
        np.testing.assert_allclose(out[0, 0].numpy(), factor * image, atol=1e-12)


def test_mollifier_on_a_constant_batch_and_its_targets() -> None:
    g = torch.Generator().manual_seed(3)
    moll = M.Mollifier(num_classes=4, roles=("clean", "blur"), beta=2.0)
    x = torch.full((64, 1, 8, 8), -0.5)
    labels = torch.arange(64) % 4
    out, soft = moll(x, labels, g)
    assert torch.allclose(out, x, atol=1e-5)  # clean or blurred, a constant stays constant
    assert soft.shape == (64, 4) and torch.allclose(soft.sum(1), torch.ones(64))
    # the same draws again: gamma is 0 for clean rows and t (bpow 1) for blurred ones; a target's
    # label entry is 1 - gamma + gamma / 4, the others gamma / 4
    role, t = moll.draw(64, torch.Generator().manual_seed(3))
    gamma = torch.where(role == 0, torch.zeros_like(t), t)
    assert torch.allclose(soft[torch.arange(64), labels], 1 - gamma + gamma / 4, atol=1e-6)
    assert torch.allclose(soft[torch.arange(64), (labels + 1) % 4], gamma / 4, atol=1e-6)
    assert (role == 0).any() and (role == 1).any() and (t[role == 1] > 0).all()  # both roles drawn


def test_noise_role_follows_the_schedule_for_its_drawn_time() -> None:
    moll = M.Mollifier(num_classes=3, roles=("noise",), beta=1.0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out, soft = moll(x, torch.zeros(8, dtype=torch.long), g1)
    _, t = moll.draw(8, g2)  # the same draws in the same order
    eps = torch.randn(x.shape, generator=g2)
    expected = torch.cos(math.pi * t / 2)[:, None, None, None] * x + torch.sin(math.pi * t / 2)[:, None, None, None] * eps
    assert torch.allclose(out, expected, atol=1e-6)
    gamma = torch.sin(math.pi * t / 2) ** 2
    assert torch.allclose(soft[:, 0], 1 - gamma + gamma / 3, atol=1e-6)


@pytest.mark.parametrize("roles", [("clean", "noise", "blur"), ("blur", "clean", "noise")])
def test_a_mixed_batch_mollifies_each_row_by_its_role_and_time(roles) -> None:
    # every role at once on a non-constant rectangular batch; npow != bpow != 1 so that the
    # exponents cannot be swapped or dropped unnoticed
    k, npow, bpow = 5, 2.0, 3.0
    moll = M.Mollifier(num_classes=k, roles=roles, beta=2.0, npow=npow, bpow=bpow)
    b, h, w = 60, 12, 20
    x = torch.randn(b, 2, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    labels = torch.arange(b) % k
    out, soft = moll(x, labels, torch.Generator().manual_seed(11))
    # the same draws in the same order as __call__: roles and times, then eps
    g = torch.Generator().manual_seed(11)
    role, t = moll.draw(b, g)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    names = [roles[r] for r in role.tolist()]
    assert set(names) == set(roles)
    out, x, eps, t = out.numpy(), x.numpy(), eps.numpy(), t.double().numpy()
    gammas = []
    large_sigma = 0
    for row, name in enumerate(names):
        if name == "clean":
            assert t[row] == 0.0
            np.testing.assert_array_equal(out[row], x[row])
            gamma = 0.0
        elif name == "noise":
            a, s = math.cos(math.pi * t[row] / 2), math.sin(math.pi * t[row] / 2)
            np.testing.assert_allclose(out[row], a * x[row] + s * eps[row], atol=1e-12)
            gamma = (s * s) ** npow
        else:
            sigma = 0.3 ** (1 - t[row]) * w ** t[row]  # R = W, the last axis
            for c in range(2):
                np.testing.assert_allclose(out[row, c], _dct_heat(x[row, c], sigma), atol=1e-12)
                if sigma >= 3.0:  # where the sampled Gaussian does not alias (see above)
                    np.testing.assert_allclose(out[row, c], _gaussian_reflect(x[row, c], sigma), atol=1e-10)
                    large_sigma += 1
            gamma = t[row] ** bpow
        gammas.append(gamma)
    assert large_sigma > 0
    gamma = np.array(gammas)[:, None]
    expected = gamma / k + (1 - gamma) * np.eye(k)[labels.numpy()]
    np.testing.assert_allclose(soft.numpy(), expected, atol=1e-6)


def test_beta_draws_have_the_beta_1_b_mean() -> None:
    # E[t] = 1 / (1 + b) for Beta(1, b): 1/3 at b = 2
    _, t = M.Mollifier(10, roles=("noise",), beta=2.0).draw(200_000, torch.Generator().manual_seed(0))
    assert float(t.mean()) == pytest.approx(1 / 3, abs=0.005)
    assert float(t.min()) >= 0 and float(t.max()) <= 1


def test_sink_targets_put_the_mass_on_the_drainage_output() -> None:
    soft = M.soft_targets(torch.tensor([0, 2]), torch.tensor([0.0, 0.3]), 3, "sink")
    assert torch.allclose(soft, torch.tensor([[1, 0, 0, 0], [0, 0, 0.7, 0.3]]))


def test_soft_cross_entropy_equals_the_linear_extension_and_hard_ce_at_one_hot() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    soft = torch.softmax(torch.randn(5, 4, generator=gen, dtype=torch.float64), 1)
    ce = make_loss("ce", 4)
    # independent formula: -sum q log softmax
    expected = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    assert float(ce.soft_forward(logits, soft)) == pytest.approx(float(expected))
    # the generic linear extension (every class as the target) agrees for CE
    generic = super(type(ce), ce).soft_per_sample(logits, soft).mean()
    assert float(generic) == pytest.approx(float(expected))
    labels = torch.tensor([0, 1, 2, 3, 0])
    onehot = torch.nn.functional.one_hot(labels, 4).double()
    assert float(ce.soft_forward(logits, onehot)) == pytest.approx(float(ce(logits, labels)))


def test_drainage_sink_objective() -> None:
    # (1 - gamma) drainage(z, y) + gamma (-log p_d), p_d over the 4 outputs
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.3]], dtype=torch.float64)
    loss = make_loss("drainage", 3, alpha=1.0)
    soft = torch.tensor([[0.6, 0.0, 0.0, 0.4]], dtype=torch.float64)
    z = logits[0].tolist()
    p = np.exp(z) / np.exp(z).sum()
    # drainage by hand, alpha = beta = 1, target 0: log(1 + (p_d + p_J)/p_t + p_J/p_d)
    p_t, p_j, p_d = p[0], p[1] + p[2], p[3]
    hand = 0.6 * math.log(1 + (p_d + p_j) / p_t + p_j / p_d) + 0.4 * -math.log(p_d)
    assert float(loss.soft_forward(logits, soft)) == pytest.approx(hand)


@pytest.mark.parametrize("overrides, needle", [
    ({"mollify": True, "mollify_roles": "clean,smudge"}, "unknown role 'smudge'"),
    ({"mollify": True, "mollify_beta": 0.0}, "mollify_beta=0.0 is invalid"),
    ({"mollify": True, "mollify_target": "sink"}, "only for loss=drainage"),
    ({"corruptions": "snowstorm"}, "corruptions='snowstorm' is invalid"),
    ({"corruptions": "cifar10-c"}, "not digits"),
])
def test_bad_mollify_and_corruption_settings_are_refused(overrides, needle) -> None:
    from drainage_bench.config import build_config

    with pytest.raises(UserError, match=needle):
        build_config("digits", "ce", overrides)


def test_unused_mollify_settings_do_not_change_the_trial_id() -> None:
    from drainage_bench.config import build_config

    base = build_config("digits", "ce")
    assert build_config("digits", "ce", {"mollify_beta": 3.0}).trial_id == base.trial_id
    on = build_config("digits", "ce", {"mollify": True})
    assert on.trial_id != base.trial_id
    assert build_config("digits", "ce", {"mollify": True, "mollify_beta": 3.0}).trial_id != on.trial_id
    # without a blur role the blur exponent has no effect
    noise = build_config("digits", "ce", {"mollify": True, "mollify_roles": "clean,noise"})
    assert build_config("digits", "ce", {"mollify": True, "mollify_roles": "clean,noise",
                                         "mollify_bpow": 2.0}).trial_id == noise.trial_id


@pytest.mark.parametrize("name, corruptions, model", [("mnist-mollify", "synthetic", "small_cnn"),
                                                      ("cifar10-mollify", "cifar10-c", "preact_resnet50"),
                                                      ("cifar100-mollify", "cifar100-c", "preact_resnet50")])
def test_mollify_specs_carry_what_their_toml_says(name, corruptions, model) -> None:
    from drainage_bench.sweeps.spec import load_spec

    configs = load_spec(name).expand()
    rows = {(c.label or c.loss, c.mollify, c.mollify_target if c.mollify else None) for c in configs}
    assert rows == {("ce", False, None), ("CE + mollify", True, "classes"), ("LS", False, None),
                    ("drainage", False, None), ("Drainage + mollify", True, "classes"),
                    ("Drainage-sink", True, "sink")}
    assert {c.corruptions for c in configs} == {corruptions} and {c.model for c in configs} == {model}
    if name != "mnist-mollify":  # the paper's recipe for every loss
        assert {(c.lr, c.momentum, c.weight_decay, c.epochs, c.batch_size, c.augment, c.schedule) for c in configs} == {
            (0.01, 0.9, 5e-4, 300, 128, "crop_flip_rotate15", "cosine")}


def test_evaluation_nll_and_ece_on_the_closed_softmax() -> None:
    from sklearn.metrics import log_loss

    from drainage_bench.metrics import calibration
    from drainage_bench.trainer import loop

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4, generator=gen, dtype=torch.float64)  # 3 classes + a drainage column
    labels = torch.randint(0, 3, (40,), generator=gen)
    batches = [(torch.arange(i, min(40, i + 16)),) * 2 for i in range(0, 40, 16)]  # (idx, "images" = idx)
    out = loop._evaluate(lambda idx: logits[idx], batches, labels, 3)
    closed = torch.softmax(logits[:, :3], 1).numpy()  # the drainage column left out, renormalised
    assert out["nll"] == pytest.approx(log_loss(labels.numpy(), closed, labels=[0, 1, 2]))
    assert out["acc"] == pytest.approx(float((closed.argmax(1) == labels.numpy()).mean()))
    assert out["ece"] == pytest.approx(calibration.ece(closed.max(1), closed.argmax(1) == labels.numpy()))


@pytest.mark.slow
def test_a_mollified_trial_with_synthetic_corruptions_end_to_end(tmp_path) -> None:
    from drainage_bench.analysis.store import ResultsStore
    from drainage_bench.config import build_config
    from drainage_bench.trainer.corruptions import SYNTHETIC
    from drainage_bench.trainer.loop import run_trial

    base = {"epochs": 1, "corruptions": "synthetic", "corruption_images": 20}
    config = build_config("digits", "drainage", {**base, "mollify": True, "mollify_target": "sink"})
    first, again = run_trial(config), run_trial(config)
    plain = run_trial(build_config("digits", "drainage", base))
    assert first.status == "ok", first.error
    assert first.epochs[0]["train_loss"] == again.epochs[0]["train_loss"]  # seeded: the same numbers
    assert first.corruptions == again.corruptions
    assert first.epochs[0]["train_loss"] != plain.epochs[0]["train_loss"]  # mollification changed training
    ResultsStore(tmp_path, "t").write_trial(first.record(), first.epochs, first.samples, corruptions=first.corruptions)
    cells = ResultsStore(tmp_path, "t").corruptions()
    assert len(cells) == len(SYNTHETIC) * 5 and set(cells["severity"]) == {1, 2, 3, 4, 5}
    record = ResultsStore(tmp_path, "t").trials().iloc[0]
    assert record["corruption_error"] == pytest.approx(cells["error"].mean())
    assert record["corruption_ece_noise"] == pytest.approx(cells.loc[cells["group"] == "noise", "ece"].mean())
    assert 0 < record["final_test_nll"] and 0 <= record["final_test_ece"] <= 1

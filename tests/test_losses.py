"""Tests for drainage_bench.trainer.losses.

Expected values come from the formulas written out again here in numpy, in probability space
(not in the module's log space), or from numbers worked out by hand.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from drainage_bench.errors import UserError
from drainage_bench.trainer.losses import (
    LOSSES,
    display_name,
    drainage_probability,
    loss_defaults,
    make_loss,
    validate_loss_params,
)

# Three samples over three classes with simple probabilities; logits = log p.
PROBS = np.array([[0.5, 0.25, 0.25],
                  [0.2, 0.3, 0.5],
                  [1 / 3, 1 / 3, 1 / 3]])
LABELS = np.array([0, 2, 1])

# Three samples over three classes + drainage (last column).
DRAIN_PROBS = np.array([[0.4, 0.1, 0.2, 0.3],
                        [0.25, 0.25, 0.25, 0.25],
                        [0.1, 0.2, 0.3, 0.4]])

MIN_PROB = 1e-7


def as_logits(probs: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(np.log(probs), dtype=dtype)


def per_sample(name: str, probs: np.ndarray, labels: np.ndarray, dtype=torch.float64, **params):
    loss = make_loss(name, num_classes=3, reduction="none", **params)
    return loss(as_logits(probs, dtype), torch.tensor(labels)).double().numpy()


# ---------------------------------------------------------------------------------------------
# The formulas, in probability space.


def target_p(P, y):
    return P[np.arange(len(y)), y]


def one_hot(y, num_classes):
    return np.eye(num_classes)[y]


def ref_ce(P, y):
    return -np.log(target_p(P, y))


def ref_fl(P, y, gamma=0.5):
    p = target_p(P, y)
    return -((1 - p) ** gamma) * np.log(p)


def ref_mae(P, y):
    return 1 - target_p(P, y)


def ref_gce(P, y, q=0.7):
    return (1 - target_p(P, y) ** q) / q


def ref_rce(P, y):
    # -sum_k p_k log q_k, with the one-hot label q clipped to [1e-4, 1].
    q = np.clip(one_hot(y, P.shape[1]), 1e-4, 1.0)
    return -(P * np.log(q)).sum(axis=1)


def ref_sce(P, y, alpha=0.1, beta=1.0):
    return alpha * ref_ce(P, y) + beta * ref_rce(P, y)


def ref_nce(P, y):
    return np.log(target_p(P, y)) / np.log(P).sum(axis=1)


def ref_nfl(P, y, gamma=0.5):
    fl = -((1 - P) ** gamma) * np.log(P)
    return target_p(fl, y) / fl.sum(axis=1)


def ref_agce(P, y, a, q):
    return ((a + 1) ** q - (a + target_p(P, y)) ** q) / q


def ref_aul(P, y, a, q):
    return ((a - target_p(P, y)) ** q - (a - 1) ** q) / q


def ref_ael(P, y, a):
    return np.exp(-target_p(P, y) / a)


def ref_nnce(P, y):
    u = -np.log(MIN_PROB) + np.log(np.maximum(P, MIN_PROB))
    return 1 - target_p(u, y) / u.sum(axis=1)


def ref_nnfl(P, y, gamma):
    Pc = np.maximum(P, MIN_PROB)
    fl = -((1 - Pc) ** gamma) * np.log(Pc)
    top = -((1 - MIN_PROB) ** gamma) * np.log(MIN_PROB)
    return 1 - (top - target_p(fl, y)) / (P.shape[1] * top - fl.sum(axis=1))


def ref_entropy_gap(P):
    pbar = P.mean(axis=0)
    return math.log(P.shape[1]) + (pbar * np.log(pbar)).sum()


def ref_ls(P, y, epsilon=0.1):
    # cross entropy against the smoothed label (1 - eps) e_y + eps / C
    C = P.shape[1]
    smoothed = (1 - epsilon) * one_hot(y, C) + epsilon / C
    return -(smoothed * np.log(P)).sum(axis=1)


def ref_drainage(P, y, alpha=1.0, beta=None):
    beta = 1 / alpha if beta is None else beta
    p_t = target_p(P, y)
    p_d = P[:, -1]
    p_J = (P[:, :-1] * (1 - one_hot(y, P.shape[1] - 1))).sum(axis=1)
    return np.log1p(alpha * (p_d + p_J) / p_t + beta * p_J / p_d)


REFERENCES = {
    "ce": ref_ce,
    "fl": ref_fl,
    "mae": ref_mae,
    "gce": ref_gce,
    "sce": ref_sce,
    "nce": ref_nce,
    "rce": ref_rce,
    "nfl": ref_nfl,
    "nce_rce": lambda P, y, alpha=1.0, beta=1.0: alpha * ref_nce(P, y) + beta * ref_rce(P, y),
    "nce_mae": lambda P, y, alpha=1.0, beta=1.0: alpha * ref_nce(P, y) + beta * ref_mae(P, y),
    "nfl_rce": lambda P, y, alpha=1.0, beta=1.0, gamma=0.5: (
        alpha * ref_nfl(P, y, gamma) + beta * ref_rce(P, y)),
    "nce_agce": lambda P, y, alpha=1.0, beta=4.0, a=6.0, q=1.5: (
        alpha * ref_nce(P, y) + beta * ref_agce(P, y, a, q)),
    "nce_aul": lambda P, y, alpha=1.0, beta=4.0, a=6.3, q=1.5: (
        alpha * ref_nce(P, y) + beta * ref_aul(P, y, a, q)),
    "nce_ael": lambda P, y, alpha=1.0, beta=4.0, a=5.0: (
        alpha * ref_nce(P, y) + beta * ref_ael(P, y, a)),
    "anl_ce": lambda P, y, alpha=1.0, beta=1.0: alpha * ref_nce(P, y) + beta * ref_nnce(P, y),
    "anl_fl": lambda P, y, alpha=1.0, beta=1.0, gamma=0.5: (
        alpha * ref_nfl(P, y, gamma) + beta * ref_nnfl(P, y, gamma)),
    "anl_ce_er": lambda P, y, alpha=1.0, beta=1.0, lam=0.1: (
        alpha * ref_nce(P, y) + beta * ref_nnce(P, y) + lam * ref_entropy_gap(P)),
    "ls": ref_ls,
    "drainage": ref_drainage,
}

# Non-default parameters, to check that each one reaches the formula.
OTHER_PARAMS = {
    "fl": {"gamma": 2.0},
    "gce": {"q": 0.3},
    "sce": {"alpha": 0.5, "beta": 2.0},
    "nfl": {"gamma": 1.0},
    "nce_rce": {"alpha": 2.0, "beta": 0.5},
    "nce_mae": {"alpha": 0.0, "beta": 1.0},
    "nfl_rce": {"alpha": 0.5, "beta": 3.0, "gamma": 2.0},
    "nce_agce": {"alpha": 0.0, "beta": 1.0, "a": 1.0, "q": 2.0},
    "nce_aul": {"alpha": 2.0, "beta": 1.0, "a": 1.5, "q": 0.9},
    "nce_ael": {"alpha": 1.0, "beta": 2.0, "a": 3.0},
    "anl_ce": {"alpha": 5.0, "beta": 5.0},
    "anl_fl": {"alpha": 5.0, "beta": 2.0, "gamma": 1.0},
    "anl_ce_er": {"alpha": 5.0, "beta": 5.0, "lam": 2.0},
    "ls": {"epsilon": 0.3},
    "drainage": {"alpha": 2.0, "beta": 0.7},
}

EXPECTED_DEFAULTS = {
    "ce": {},
    "fl": {"gamma": 0.5},
    "mae": {},
    "gce": {"q": 0.7},
    "sce": {"alpha": 0.1, "beta": 1.0},
    "nce": {},
    "rce": {},
    "nfl": {"gamma": 0.5},
    "nce_rce": {"alpha": 1.0, "beta": 1.0},
    "nce_mae": {"alpha": 1.0, "beta": 1.0},
    "nfl_rce": {"alpha": 1.0, "beta": 1.0, "gamma": 0.5},
    "nce_agce": {"alpha": 1.0, "beta": 4.0, "a": 6.0, "q": 1.5},
    "nce_aul": {"alpha": 1.0, "beta": 4.0, "a": 6.3, "q": 1.5},
    "nce_ael": {"alpha": 1.0, "beta": 4.0, "a": 5.0},
    "anl_ce": {"alpha": 1.0, "beta": 1.0},
    "anl_fl": {"alpha": 1.0, "beta": 1.0, "gamma": 0.5},
    "anl_ce_er": {"alpha": 1.0, "beta": 1.0, "lam": 0.1},
    "ls": {"epsilon": 0.1},
    "drainage": {"alpha": 1.0, "beta": None},
}


def probs_for(name):
    return DRAIN_PROBS if LOSSES[name].extra_outputs else PROBS


def test_every_registered_loss_has_a_reference_and_expected_defaults():
    assert set(REFERENCES) == set(LOSSES) == set(EXPECTED_DEFAULTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_DEFAULTS))
def test_defaults_in_signature_order(name):
    defaults = loss_defaults(name)
    assert defaults == EXPECTED_DEFAULTS[name]
    assert list(defaults) == list(EXPECTED_DEFAULTS[name])


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-6)])
def test_values_match_formula_with_defaults(name, dtype, tol):
    P = probs_for(name)
    got = per_sample(name, P, LABELS, dtype)
    np.testing.assert_allclose(got, REFERENCES[name](P, LABELS), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(OTHER_PARAMS))
def test_values_match_formula_with_other_params(name):
    P = probs_for(name)
    params = OTHER_PARAMS[name]
    got = per_sample(name, P, LABELS, **params)
    np.testing.assert_allclose(got, REFERENCES[name](P, LABELS, **params), rtol=1e-10)


HAND_VALUES = [
    # row [0.5, 0.25, 0.25], label 0
    ("ce", {}, 0, math.log(2)),
    ("mae", {}, 0, 0.5),
    ("fl", {"gamma": 1.0}, 0, 0.5 * math.log(2)),
    ("nce", {}, 0, 0.2),  # log 2 / (log 2 + 2 log 4) = 1 / 5
    ("rce", {}, 0, 0.5 * math.log(1e4)),
    ("ls", {"epsilon": 0.1}, 0, (0.9 + 5 / 30) * math.log(2)),
    ("gce", {"q": 0.5}, 0, (1 - math.sqrt(0.5)) / 0.5),
    # row [1/3, 1/3, 1/3], label 1
    ("nce", {}, 2, 1 / 3),
    ("anl_ce", {}, 2, 1 / 3 + 2 / 3),
    ("nce_ael", {"alpha": 1.0, "beta": 1.0, "a": 1 / 3}, 2, 1 / 3 + math.exp(-1)),
    ("nce_agce", {"alpha": 0.0, "beta": 1.0, "a": 1.0, "q": 1.0}, 2, 2 - 4 / 3),
]


@pytest.mark.parametrize("name, params, row, expected", HAND_VALUES)
def test_hand_worked_values(name, params, row, expected):
    got = per_sample(name, PROBS, LABELS, **params)[row]
    assert got == pytest.approx(expected, rel=1e-12)


# Rows with probabilities below min_prob = 1e-7, where NNCE / NNFL clamp. Without the clamp
# u_k = A + log p_k would go negative; with it a clamped target gives u_y = 0 and FL_y = A'.
TINY_PROBS = np.array([[1e-10, 0.5, 0.5 - 1e-10],
                       [1 - 2e-9, 1e-9, 1e-9]])
TINY_LABELS = np.array([0, 0])


@pytest.mark.parametrize("name, params", [("anl_ce", {}), ("anl_fl", {"gamma": 0.5}),
                                          ("anl_fl", {"gamma": 2.0})])
def test_negative_losses_clamp_probabilities_below_min_prob(name, params):
    got = per_sample(name, TINY_PROBS, TINY_LABELS, alpha=0.0, beta=1.0, **params)
    # Row 0: the target is clamped, u_y = 0 (NNCE) and FL_y = A' (NNFL): the loss is 1.
    # Row 1: p_y ~ 1, the others clamped: u = [A, 0, 0] and FL = [~0, A', A']: the loss is ~0.
    np.testing.assert_allclose(got, [1.0, 0.0], atol=1e-8)
    negative = ref_nnce if name == "anl_ce" else lambda P, y: ref_nnfl(P, y, params["gamma"])
    np.testing.assert_allclose(got, negative(TINY_PROBS, TINY_LABELS), rtol=1e-10, atol=1e-12)


def test_drainage_hand_values():
    # Four equal outputs: p_t = p_d = 1/4, p_J = 1/2.
    equal = torch.zeros(1, 4)
    label = torch.tensor([0])
    assert make_loss("drainage", 3)(equal, label).item() == pytest.approx(math.log(1 + 3 + 2))
    # alpha 2 and beta defaulting to 1/alpha: log(1 + 2 * 3 + 0.5 * 2)
    assert make_loss("drainage", 3, alpha=2.0)(equal, label).item() == pytest.approx(math.log(8))


def test_anl_ce_er_adds_the_batch_term_to_every_sample():
    logits = as_logits(PROBS)
    labels = torch.tensor(LABELS)
    plain = make_loss("anl_ce", 3, reduction="none")(logits, labels)
    regularized = make_loss("anl_ce_er", 3, reduction="none", lam=2.0)(logits, labels)
    # The batch mean is [(0.5 + 0.2 + 1/3) / 3, ...]; its gap to log 3 is independent of labels.
    expected_gap = 2.0 * ref_entropy_gap(PROBS)
    assert expected_gap > 0
    np.testing.assert_allclose((regularized - plain).numpy(), expected_gap, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# Extreme logits: finite values and gradients for every loss.


def extreme_logits(width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of rows with |z| = 50: one-hot-ish (target on top and at the bottom), all equal,
    and random; the labels are among the first three columns."""
    one_hot_ish = torch.full((width, width), -50.0)
    one_hot_ish.fill_diagonal_(50.0)
    generator = torch.Generator().manual_seed(0)
    rows = [
        (one_hot_ish, torch.zeros(width, dtype=torch.long)),
        (one_hot_ish, torch.ones(width, dtype=torch.long)),
        (-one_hot_ish, torch.zeros(width, dtype=torch.long)),
        (torch.zeros(2, width), torch.tensor([0, 1])),
        (torch.full((2, width), 50.0), torch.tensor([0, 1])),
        (torch.full((2, width), -50.0), torch.tensor([2, 1])),
        (torch.rand(8, width, generator=generator) * 100 - 50,
         torch.randint(0, 3, (8,), generator=generator)),
    ]
    return torch.cat([z for z, _ in rows]), torch.cat([y for _, y in rows])


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_values_and_gradients_at_extreme_logits(name, dtype):
    loss = make_loss(name, num_classes=3, reduction="none")
    logits, labels = extreme_logits(3 + loss.extra_outputs)
    leaf = logits.to(dtype).requires_grad_()
    values = loss(leaf, labels)
    values.sum().backward()
    assert values.dtype == torch.float32
    bad_values = (~torch.isfinite(values)).nonzero().flatten().tolist()
    bad_grads = (~torch.isfinite(leaf.grad).all(dim=1)).nonzero().flatten().tolist()
    assert bad_values == [] and bad_grads == [], (name, logits[bad_values + bad_grads])


# ---------------------------------------------------------------------------------------------
# Reductions and the detached focal weight.


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_reduction_none_averages_to_the_default(name):
    generator = torch.Generator().manual_seed(1)
    width = 5 + LOSSES[name].extra_outputs
    logits = torch.randn(7, width, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, 5, (7,), generator=generator)
    values = make_loss(name, 5, reduction="none")(logits, labels)
    assert values.shape == (7,)
    assert make_loss(name, 5)(logits, labels).item() == pytest.approx(values.mean().item())


def focal_reference(logits, labels, gamma, normalized, weight_is_constant):
    """(1 - p_k)^gamma (-log p_k), and FL_y or FL_y / sum_k FL_k, averaged over the batch.

    A constant weight is computed in numpy, so autograd cannot see it; otherwise in torch.
    """
    if weight_is_constant:
        z = logits.detach().numpy()
        probs = np.exp(z - z.max(axis=1, keepdims=True))
        weights = torch.tensor((1 - probs / probs.sum(axis=1, keepdims=True)) ** gamma)
    else:
        weights = (1 - F.softmax(logits, dim=1)) ** gamma
    terms = -weights * F.log_softmax(logits, dim=1)
    picked = terms.gather(1, labels[:, None]).squeeze(1)
    return (picked / terms.sum(dim=1) if normalized else picked).mean()


def gradient(function, logits):
    leaf = logits.clone().requires_grad_()
    function(leaf).backward()
    return leaf.grad


@pytest.mark.parametrize("name, normalized", [("fl", False), ("nfl", True)])
def test_focal_weight_is_a_constant(name, normalized):
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 4, generator=generator, dtype=torch.float64) * 2
    labels = torch.randint(0, 4, (6,), generator=generator)
    loss = make_loss(name, 4, gamma=2.0)

    ours = gradient(lambda z: loss(z, labels), logits)
    constant = gradient(lambda z: focal_reference(z, labels, 2.0, normalized, True), logits)
    live = gradient(lambda z: focal_reference(z, labels, 2.0, normalized, False), logits)
    torch.testing.assert_close(ours, constant, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ours, live, rtol=1e-3)  # the check can tell the two apart


def nnfl_reference(logits, labels, gamma, weight_is_constant):
    """NNFL, log p clamped at log min_prob; a constant weight (1 - p_k)^gamma is made in numpy."""
    log_p = F.log_softmax(logits, dim=1).clamp(min=math.log(MIN_PROB))
    if weight_is_constant:
        weights = torch.tensor((1 - np.exp(log_p.detach().numpy())) ** gamma)
    else:
        weights = (1 - log_p.exp()) ** gamma
    terms = -weights * log_p
    top = -((1 - MIN_PROB) ** gamma) * math.log(MIN_PROB)
    picked = terms.gather(1, labels[:, None]).squeeze(1)
    return (1 - (top - picked) / (logits.shape[1] * top - terms.sum(dim=1))).mean()


def test_negative_focal_weight_is_a_constant():
    # Ye et al.'s NormalizedNegativeFocalLoss takes the weights from logpt.data, as NFL does.
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 4, generator=generator, dtype=torch.float64) * 2
    labels = torch.randint(0, 4, (6,), generator=generator)
    loss = make_loss("anl_fl", 4, alpha=0.0, beta=1.0, gamma=2.0)

    ours = gradient(lambda z: loss(z, labels), logits)
    constant = gradient(lambda z: nnfl_reference(z, labels, 2.0, True), logits)
    live = gradient(lambda z: nnfl_reference(z, labels, 2.0, False), logits)
    torch.testing.assert_close(ours, constant, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ours, live, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# Drainage: the propositions, and the probability-space formula.


@st.composite
def drainage_moves(draw):
    """A probability vector over C + 1 outputs, a target t, a class j in J and a fraction."""
    num_classes = draw(st.integers(2, 6))
    weights = draw(st.lists(st.floats(1e-3, 1.0), min_size=num_classes + 1,
                            max_size=num_classes + 1))
    probs = np.array(weights) / sum(weights)
    target = draw(st.integers(0, num_classes - 1))
    others = [k for k in range(num_classes) if k != target]
    source = draw(st.sampled_from(others))
    fraction = draw(st.floats(0.0, 1.0))
    alpha = draw(st.floats(0.05, 20.0))
    beta = draw(st.none() | st.floats(0.05, 20.0))
    return num_classes, probs, target, source, fraction, alpha, beta


def drainage_value(probs, target, num_classes, alpha, beta) -> float:
    loss = make_loss("drainage", num_classes, alpha=alpha, beta=beta)
    with np.errstate(divide="ignore"):  # a class emptied by a move has logit -inf
        logits = torch.tensor(np.log(probs), dtype=torch.float64)[None, :]
    return loss(logits, torch.tensor([target])).item()


def moved(probs, source, destination, fraction):
    result = probs.copy()
    amount = fraction * probs[source]
    result[source] -= amount
    result[destination] += amount
    return result


@settings(max_examples=120, deadline=None)
@given(drainage_moves())
def test_drainage_moving_mass_from_J_to_target_never_raises_loss(case):
    num_classes, probs, target, source, fraction, alpha, beta = case
    before = drainage_value(probs, target, num_classes, alpha, beta)
    after = drainage_value(moved(probs, source, target, fraction), target, num_classes,
                           alpha, beta)
    assert after <= before + 1e-12 * max(1.0, abs(before))


@settings(max_examples=120, deadline=None)
@given(drainage_moves())
def test_drainage_moving_mass_from_J_to_drainage_never_raises_loss(case):
    num_classes, probs, target, source, fraction, alpha, beta = case
    before = drainage_value(probs, target, num_classes, alpha, beta)
    after = drainage_value(moved(probs, source, num_classes, fraction), target, num_classes,
                           alpha, beta)
    assert after <= before + 1e-12 * max(1.0, abs(before))


def test_drainage_moving_mass_into_J_raises_loss():
    # The property tests above would pass for a constant; this one would not.
    probs = np.array([0.4, 0.1, 0.2, 0.3])
    before = drainage_value(probs, 0, 3, 1.0, None)
    assert drainage_value(moved(probs, 0, 1, 0.5), 0, 3, 1.0, None) > before
    assert drainage_value(moved(probs, 3, 1, 0.5), 0, 3, 1.0, None) > before


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 8).flatmap(lambda c: st.tuples(
    st.just(c),
    st.lists(st.lists(st.floats(-15.0, 15.0), min_size=c + 1, max_size=c + 1),
             min_size=1, max_size=4),
    st.integers(0, c - 1),
    st.floats(0.05, 20.0),
    st.none() | st.floats(0.05, 20.0),
)))
def test_drainage_equals_probability_formula(case):
    num_classes, rows, target, alpha, beta = case
    logits = np.array(rows)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    labels = np.full(len(rows), target)
    loss = make_loss("drainage", num_classes, reduction="none", alpha=alpha, beta=beta)
    got = loss(torch.tensor(logits), torch.tensor(labels)).numpy()
    # atol: the module's log(1 + tiny) is exact only to ~1e-16 absolute
    np.testing.assert_allclose(got, ref_drainage(probs, labels, alpha, beta),
                               rtol=1e-9, atol=1e-13)


def test_drainage_rejects_logits_without_the_drainage_column():
    loss = make_loss("drainage", 3)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        loss(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_drainage_probability_is_the_last_softmax_column():
    got = drainage_probability(as_logits(DRAIN_PROBS, torch.float32))
    np.testing.assert_allclose(got.numpy(), DRAIN_PROBS[:, -1], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Registry, names and parameter validation.


def test_class_attributes():
    for name, cls in LOSSES.items():
        assert cls.extra_outputs == (1 if name == "drainage" else 0)
        assert cls.paper and cls.display
        assert "=" in cls.__doc__, f"{name} docstring must state its formula"
        assert set(cls.ranges) == set(loss_defaults(name)), name


@pytest.mark.parametrize("name, shown", [
    ("ce", "CE"), ("gce", "GCE"), ("sce", "SCE"), ("nce_rce", "NCE+RCE"),
    ("nce_agce", "NCE+AGCE"), ("anl_ce", "ANL-CE"), ("drainage", "Drainage"),
])
def test_display_names(name, shown):
    assert display_name(name) == shown


@pytest.mark.parametrize("call", [
    lambda: make_loss("x", 3),
    lambda: display_name("x"),
    lambda: loss_defaults("x"),
    lambda: validate_loss_params("x", {}),
])
def test_unknown_loss_names_the_loss_and_the_valid_ones(call):
    with pytest.raises(UserError, match=r"unknown loss 'x'; valid: .*drainage"):
        call()


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(UserError, match=r"'nce_agce'.*'r'.*valid: alpha, beta, a, q"):
        validate_loss_params("nce_agce", {"r": 1.0})
    with pytest.raises(UserError, match=r"'ce'.*'q'"):
        make_loss("ce", 3, q=0.5)


def test_validate_completes_with_defaults_without_num_classes():
    assert validate_loss_params("nce_agce", {"beta": 2}) == {
        "alpha": 1.0, "beta": 2.0, "a": 6.0, "q": 1.5}
    # beta's default is derived (1/alpha) and spelled out, so equal losses get equal trial_ids
    assert validate_loss_params("drainage", {}) == {"alpha": 1.0, "beta": 1.0}
    assert validate_loss_params("drainage", {"alpha": 4}) == {"alpha": 4.0, "beta": 0.25}


@pytest.mark.parametrize("name, key, value", [
    ("gce", "q", 0.0), ("gce", "q", -1.0), ("gce", "q", 1.5),
    ("fl", "gamma", -0.1), ("nfl", "gamma", -1.0), ("anl_fl", "gamma", -0.5),
    ("ls", "epsilon", 1.0), ("ls", "epsilon", -0.1),
    ("nce_agce", "a", 0.0), ("nce_agce", "q", 0.0), ("nce_aul", "a", 1.0),
    ("nce_aul", "q", -1.0), ("nce_ael", "a", -2.0),
    ("drainage", "alpha", 0.0), ("drainage", "beta", 0.0), ("drainage", "alpha", -1.0),
    ("sce", "alpha", -1.0), ("nce_rce", "beta", -0.5), ("anl_ce_er", "lam", -1.0),
    ("anl_ce", "alpha", math.nan), ("gce", "q", math.inf),
    ("gce", "q", "0.7"), ("fl", "gamma", True), ("gce", "q", None),
])
def test_out_of_range_parameters(name, key, value):
    with pytest.raises(UserError, match=rf"'{name}'.*{key}"):
        validate_loss_params(name, {key: value})
    with pytest.raises(UserError, match=rf"'{name}'.*{key}"):
        make_loss(name, 3, **{key: value})


@pytest.mark.parametrize("name", ["sce", "nce_rce", "nce_mae", "nfl_rce", "nce_agce",
                                  "nce_aul", "nce_ael", "anl_ce", "anl_fl", "anl_ce_er"])
def test_pair_weights_may_not_both_be_zero(name):
    with pytest.raises(UserError, match=rf"'{name}'.*alpha and beta"):
        validate_loss_params(name, {"alpha": 0, "beta": 0})
    assert validate_loss_params(name, {"alpha": 0, "beta": 1})["alpha"] == 0.0


def test_bad_num_classes_and_reduction():
    with pytest.raises(UserError, match="num_classes"):
        make_loss("ce", 1)
    with pytest.raises(UserError, match="reduction 'sum'"):
        make_loss("ce", 3, reduction="sum")


def test_the_catalogue_copy_of_the_loss_names_matches_the_registry():
    """Tables name and order rows from catalog.LOSS_DISPLAY (no torch there): it must list every
    registered loss, in the registry's order, with the class's display name."""
    from drainage_bench.catalog import LOSS_DISPLAY

    assert list(LOSS_DISPLAY.items()) == [(name, cls.display) for name, cls in LOSSES.items()]

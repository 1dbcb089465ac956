"""Loss registry: robust losses for learning with noisy labels, and the drainage loss.

``make_loss(name, num_classes, **params)`` builds a loss; ``LOSSES`` maps each registry name to
its ``nn.Module`` class. Every class computes its value from the logits in log space
(``log_softmax`` / ``logsumexp``) after casting them to float32 (float64 stays float64), so
that logits of size 50 in any float dtype, bf16 under autocast included, give finite values and
gradients.

Notation: ``z`` the logits of one sample, ``p = softmax(z)`` over the C classes, ``y`` its
(possibly noisy) label, ``log`` the natural logarithm. Each loss is a per-sample value; the
module returns their batch mean (``reduction="mean"``) or the values themselves
(``reduction="none"``).

Deliberate deviation from the reference code (Ma et al. 2020, Ye et al. 2023): where it clamps
p at 1e-7 only to keep log 0 and 0^q away (GCE's p_y^q, the p_k in RCE, the entropy term of
ANL-CE-ER, the upper clamp 1 - 1e-7 in its NNCE), the value here is computed exactly in log
space. They differ only where a probability is below 1e-7 (or above 1 - 1e-7), by at most
(1e-7)^q / q for GCE (2e-5 at q = 0.7) and 9.2e-7 (C - 1) for RCE; there the reference's
gradient is 0 and ours is small. The clamps that are part of a formula (NNCE, NNFL: min_prob)
are kept exactly.

A loss whose model needs extra output columns says so in ``extra_outputs`` (the drainage loss:
1, the last column is the drainage logit). An L1 weight penalty, where a recipe asks for one,
is the trainer's business and is not part of any loss here.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drainage_bench.errors import UserError, did_you_mean, lookup

LOSSES: dict[str, type] = {}

REDUCTIONS = ("mean", "none")

RCE_LOG_ZERO = math.log(1e-4)
"""Ma et al. / Wang et al. clip log(0) in the reverse cross entropy to log(1e-4) = A."""

MIN_PROB = 1e-7
"""Ye et al.: probabilities are clamped below at this value in the negative losses."""
LOG_MIN_PROB = math.log(MIN_PROB)


@dataclass(frozen=True)
class Range:
    """An interval of valid values for one loss parameter."""

    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = False
    high_closed: bool = False

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        return (f"{'[' if self.low_closed else '('}{self.low:g}, "
                f"{self.high:g}{']' if self.high_closed else ')'}")


POSITIVE = Range(0.0)
NON_NEGATIVE = Range(0.0, low_closed=True)
ABOVE_ONE = Range(1.0)
HALF_OPEN_UNIT = Range(0.0, 1.0, low_closed=True)
UNIT_EXCLUDING_ZERO = Range(0.0, 1.0, high_closed=True)


def register(name: str):
    """Class decorator: add a loss class to ``LOSSES`` under ``name``."""

    def add(cls: type) -> type:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        cls.name = name
        LOSSES[name] = cls
        return cls

    return add


def _loss_class(name: str) -> type:
    return lookup("loss", name, LOSSES)


def loss_defaults(name: str) -> dict[str, float | None]:
    """The parameters of loss ``name`` and their defaults, in signature order."""
    return dict(_signature_defaults(_loss_class(name)))


@functools.cache
def _signature_defaults(cls: type) -> dict[str, float | None]:
    # Cached: expanding a 10,000-trial sweep asks three times per trial (inspect is slow).
    signature = inspect.signature(cls.__init__)
    return {key: parameter.default
            for key, parameter in signature.parameters.items()
            if key not in ("self", "num_classes", "reduction")
            and parameter.kind is not parameter.VAR_KEYWORD}


def validate_loss_params(name: str, params: dict) -> dict:
    """``params`` completed with the defaults of loss ``name``, numbers as floats.

    Raises UserError for an unknown loss, an unknown parameter name, a value that is not a
    finite number, or a value out of the loss's range.
    """
    cls = _loss_class(name)
    defaults = loss_defaults(name)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise UserError(f"loss {name!r} has no parameter {unknown[0]!r}; valid: {valid}")
    completed = {key: _as_number(name, key, params.get(key, default), default)
                 for key, default in defaults.items()}
    cls.check_params(completed)
    return cls.derive_params(completed)


def _as_number(loss: str, key: str, value, default: float | None) -> float | None:
    if value is None:
        if default is None:
            return None
        raise UserError(f"loss {loss!r}: {key} must be a number, not None")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"loss {loss!r}: {key}={value!r} must be a number")
    if not math.isfinite(value):
        raise UserError(f"loss {loss!r}: {key}={value} must be finite")
    return float(value)


def make_loss(name: str, num_classes: int, reduction: str = "mean", **params) -> nn.Module:
    """Build loss ``name`` for ``num_classes`` classes; ``params`` override its defaults."""
    return _loss_class(name)(num_classes, reduction, **validate_loss_params(name, params))


def display_name(name: str) -> str:
    """The name a paper table uses for loss ``name`` ("NCE+RCE", "Drainage", ...)."""
    return _loss_class(name).display


def drainage_probability(logits: Tensor) -> Tensor:
    """Probability of the drainage output: softmax over all C+1 columns, the last column."""
    return torch.softmax(_at_least_float32(logits), dim=-1)[..., -1]


# ----------------------------------------------------------------------------------------------
# Per-sample terms, from log-probabilities log_p (B, C) and targets (B,).


def _at_least_float32(logits: Tensor) -> Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()


def _pick(values: Tensor, targets: Tensor) -> Tensor:
    """``values[i, targets[i]]`` for each row i."""
    return values.gather(1, targets.unsqueeze(1)).squeeze(1)


def _one_minus_exp(log_p: Tensor) -> Tensor:
    """1 - p from log p, accurate when p is close to 1."""
    return -torch.expm1(log_p)


def cross_entropy(log_p: Tensor, targets: Tensor) -> Tensor:
    """CE = -log p_y."""
    return -_pick(log_p, targets)


def mean_absolute_error(log_p: Tensor, targets: Tensor) -> Tensor:
    """MAE = 1 - p_y (half of Ghosh et al.'s ||e_y - p||_1 = 2 - 2 p_y)."""
    return _one_minus_exp(_pick(log_p, targets))


def reverse_cross_entropy(log_p: Tensor, targets: Tensor) -> Tensor:
    """RCE = -sum_k p_k log q_k with q the one-hot label, log 0 := A = log(1e-4): -A (1 - p_y)."""
    return -RCE_LOG_ZERO * mean_absolute_error(log_p, targets)


def normalized_cross_entropy(log_p: Tensor, targets: Tensor) -> Tensor:
    """NCE = log p_y / sum_k log p_k, in [0, 1]."""
    return _pick(log_p, targets) / log_p.sum(dim=1)


def focal_terms(log_p: Tensor, gamma: float) -> Tensor:
    """FL_k = -(1 - p_k)^gamma log p_k for every class k; the weight (1 - p_k)^gamma is detached."""
    weight = _one_minus_exp(log_p).detach().pow(gamma)
    return -weight * log_p


def normalized_focal(log_p: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """NFL = FL_y / sum_k FL_k."""
    terms = focal_terms(log_p, gamma)
    return _pick(terms, targets) / terms.sum(dim=1)


def normalized_negative_cross_entropy(log_p: Tensor, targets: Tensor) -> Tensor:
    """NNCE = 1 - u_y / sum_k u_k with u_k = A + log max(p_k, min_prob), A = -log min_prob."""
    shifted = log_p.clamp(min=LOG_MIN_PROB) - LOG_MIN_PROB
    return 1.0 - _pick(shifted, targets) / shifted.sum(dim=1)


def normalized_negative_focal(log_p: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """NNFL = 1 - (A' - FL_y) / (C A' - sum_k FL_k), log p clamped at log min_prob.

    A' = -(1 - min_prob)^gamma log min_prob is the largest value FL_k can take.
    """
    terms = focal_terms(log_p.clamp(min=LOG_MIN_PROB), gamma)
    largest = -((1.0 - MIN_PROB) ** gamma) * LOG_MIN_PROB
    num_classes = log_p.shape[1]
    return 1.0 - (largest - _pick(terms, targets)) / (num_classes * largest - terms.sum(dim=1))


def target_probability(log_p: Tensor, targets: Tensor) -> Tensor:
    """p_y."""
    return _pick(log_p, targets).exp()


def prior_entropy_gap(log_p: Tensor) -> Tensor:
    """log C - H(pbar) = log C + sum_k pbar_k log pbar_k, pbar the batch-mean prediction (scalar)."""
    batch, num_classes = log_p.shape
    log_mean = torch.logsumexp(log_p, dim=0) - math.log(batch)
    return math.log(num_classes) + (log_mean.exp() * log_mean).sum()


# ----------------------------------------------------------------------------------------------
# Loss modules.


class RobustLoss(nn.Module):
    """Base class: parameter checks, shape checks, dtype, reduction.

    Subclasses list their parameters, with defaults, in ``__init__`` and their valid values in
    ``ranges``; each parameter becomes an attribute. A single-term loss sets ``term`` to a
    function of (log_p, targets); others override ``per_sample``.
    """

    name: str
    display: str
    paper: str
    extra_outputs: int = 0
    ranges: dict[str, Range] = {}
    derived: dict[str, str] = {}  # parameter whose None default is derived -> how, for listings

    def __init__(self, num_classes: int, reduction: str = "mean", **params):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise UserError(f"loss {self.name!r}: num_classes={num_classes!r}; "
                            "valid: an integer >= 2")
        if reduction not in REDUCTIONS:
            raise UserError(f"loss {self.name!r}: unknown reduction {reduction!r}; "
                            f"{did_you_mean(reduction, REDUCTIONS)}")
        self.check_params(params)
        self.num_classes = num_classes
        self.reduction = reduction
        for key, value in self.derive_params(params).items():
            setattr(self, key, value)

    @classmethod
    def derive_params(cls, params: dict) -> dict:
        """Fill parameters whose default is derived from others (so equal losses hash equal)."""
        return params

    @classmethod
    def check_params(cls, params: dict) -> None:
        """Raise UserError for an unknown parameter or a value outside its range.

        None passes: it is only allowed where the default is None and means "derive it".
        """
        for key, value in params.items():
            if key not in cls.ranges:
                raise UserError(f"loss {cls.name!r} has no parameter {key!r}; "
                                f"valid: {', '.join(cls.ranges) or 'none'}")
            if value is not None and value not in cls.ranges[key]:
                raise UserError(f"loss {cls.name!r}: {key}={value} is out of range; "
                                f"valid: {key} in {cls.ranges[key]}")

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        width = self.num_classes + self.extra_outputs
        if logits.ndim != 2 or logits.shape[1] != width:
            raise ValueError(f"loss {self.name!r} expects logits of shape (B, {width}) "
                             f"for {self.num_classes} classes"
                             f"{' + 1 drainage column' if self.extra_outputs else ''}, "
                             f"got {tuple(logits.shape)}")
        if targets.shape != logits.shape[:1]:
            raise ValueError(f"loss {self.name!r}: targets of shape {tuple(targets.shape)} "
                             f"do not match logits of shape {tuple(logits.shape)}")
        values = self.per_sample(_at_least_float32(logits), targets)
        return values.mean() if self.reduction == "mean" else values

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.term(F.log_softmax(logits, dim=1), targets)

    def term(self, log_p: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def soft_forward(self, logits: Tensor, soft: Tensor) -> Tensor:
        """The loss against soft targets q (B, C), or (B, C + 1) with mass on the drainage output.

        The linear extension of the per-sample loss l(z, k) to a target distribution:

            L(z, q) = sum_{k < C} q_k l(z, k)  +  q_d (-log p_d)

        (the label distribution's expected loss; the last term only for a ``sink`` target, p_d
        the softmax of the drainage column over all C + 1 outputs). For CE this is the
        soft-target cross entropy -sum_k q_k log p_k (`soft_cross_entropy`), for label
        smoothing the smoothed CE of the soft target. Used by mollification (trainer/mollify.py).
        """
        width = self.num_classes + self.extra_outputs
        sink = soft.shape[1] == self.num_classes + 1
        if soft.shape[1] not in (self.num_classes, self.num_classes + 1) or (sink and not self.extra_outputs):
            raise ValueError(f"loss {self.name!r}: soft targets of shape {tuple(soft.shape)} for "
                             f"{self.num_classes} classes (a drainage-output target needs a drainage column)")
        logits = _at_least_float32(logits)
        values = self.soft_per_sample(logits, soft[:, :self.num_classes].to(logits.dtype))
        if sink:
            values = values + soft[:, -1].to(logits.dtype) * -F.log_softmax(logits[:, :width], dim=1)[:, -1]
        return values.mean() if self.reduction == "mean" else values

    def soft_per_sample(self, logits: Tensor, soft: Tensor) -> Tensor:
        """sum_k soft_k l(z, k) over the C classes: every class as the target in one batched call."""
        batch, classes = soft.shape
        targets = torch.arange(classes, device=logits.device).repeat(batch)
        values = self.per_sample(logits.repeat_interleave(classes, dim=0), targets).view(batch, classes)
        return (values * soft).sum(1)


def soft_cross_entropy(logits: Tensor, soft: Tensor) -> Tensor:
    """Soft-target cross entropy per sample: -sum_k q_k log softmax(z)_k over the columns of q."""
    return -(soft * F.log_softmax(logits[:, :soft.shape[1]], dim=1)).sum(1)


class WeightedPair(RobustLoss):
    """alpha * active + beta * passive; alpha, beta >= 0, not both 0."""

    ranges = {"alpha": NON_NEGATIVE, "beta": NON_NEGATIVE}

    @classmethod
    def check_params(cls, params: dict) -> None:
        super().check_params(params)
        if params["alpha"] == 0 and params["beta"] == 0:
            raise UserError(f"loss {cls.name!r}: alpha and beta are both 0; "
                            "valid: alpha >= 0, beta >= 0, at least one > 0")

    def term(self, log_p: Tensor, targets: Tensor) -> Tensor:
        return (self.alpha * self.active(log_p, targets)
                + self.beta * self.passive(log_p, targets))

    def active(self, log_p: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def passive(self, log_p: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError


@register("ce")
class CrossEntropy(RobustLoss):
    """Cross entropy: CE = -log p_y (the standard baseline)."""

    display = "CE"
    paper = "standard cross entropy"
    term = staticmethod(cross_entropy)

    def soft_per_sample(self, logits: Tensor, soft: Tensor) -> Tensor:
        """-sum_k q_k log p_k (the linear extension of CE, computed directly)."""
        return soft_cross_entropy(logits, soft)


@register("fl")
class FocalLoss(RobustLoss):
    """Focal loss: FL = -(1 - p_y)^gamma log p_y.

    The weight (1 - p_y)^gamma is treated as a constant (detached), as in the reference code
    used by Ma et al. 2020 and Ye et al. 2023. Lin et al., "Focal loss for dense object
    detection", ICCV 2017.
    """

    display = "FL"
    paper = "Lin et al., ICCV 2017"
    ranges = {"gamma": NON_NEGATIVE}

    def __init__(self, num_classes: int, reduction: str = "mean", gamma: float = 0.5):
        super().__init__(num_classes, reduction, gamma=gamma)

    def term(self, log_p: Tensor, targets: Tensor) -> Tensor:
        return _pick(focal_terms(log_p, self.gamma), targets)


@register("mae")
class MeanAbsoluteError(RobustLoss):
    """Mean absolute error: MAE = 1 - p_y.

    Ghosh et al. define ||e_y - p||_1 = 2 (1 - p_y); like the reference code of Ma et al. 2020
    we use half of it, 1 - p_y. Ghosh, Kumar, Sastry, "Robust loss functions under label noise
    for deep neural networks", AAAI 2017.
    """

    display = "MAE"
    paper = "Ghosh et al., AAAI 2017"
    term = staticmethod(mean_absolute_error)


@register("gce")
class GeneralizedCrossEntropy(RobustLoss):
    """Generalized cross entropy: GCE = (1 - p_y^q) / q, q in (0, 1] (CE as q -> 0, MAE at q = 1).

    Zhang & Sabuncu, "Generalized cross entropy loss for training deep neural networks with
    noisy labels", NeurIPS 2018.
    """

    display = "GCE"
    paper = "Zhang & Sabuncu, NeurIPS 2018"
    ranges = {"q": UNIT_EXCLUDING_ZERO}

    def __init__(self, num_classes: int, reduction: str = "mean", q: float = 0.7):
        super().__init__(num_classes, reduction, q=q)

    def term(self, log_p: Tensor, targets: Tensor) -> Tensor:
        return -torch.expm1(self.q * _pick(log_p, targets)) / self.q


@register("sce")
class SymmetricCrossEntropy(WeightedPair):
    """Symmetric cross entropy: SCE = alpha CE + beta RCE, RCE = -A (1 - p_y), A = log(1e-4).

    Wang et al., "Symmetric cross entropy for robust learning with noisy labels", ICCV 2019.
    """

    display = "SCE"
    paper = "Wang et al., ICCV 2019"
    active = staticmethod(cross_entropy)
    passive = staticmethod(reverse_cross_entropy)

    def __init__(self, num_classes: int, reduction: str = "mean",
                 alpha: float = 0.1, beta: float = 1.0):
        super().__init__(num_classes, reduction, alpha=alpha, beta=beta)


@register("nce")
class NormalizedCrossEntropy(RobustLoss):
    """Normalized cross entropy: NCE = log p_y / sum_k log p_k.

    Ma et al., "Normalized loss functions for deep learning with noisy labels", ICML 2020.
    """

    display = "NCE"
    paper = "Ma et al., ICML 2020"
    term = staticmethod(normalized_cross_entropy)


@register("rce")
class ReverseCrossEntropy(RobustLoss):
    """Reverse cross entropy: RCE = -A (1 - p_y), A = log(1e-4) standing in for log 0.

    Wang et al., ICCV 2019; used as a passive loss by Ma et al., ICML 2020.
    """

    display = "RCE"
    paper = "Wang et al., ICCV 2019"
    term = staticmethod(reverse_cross_entropy)


@register("nfl")
class NormalizedFocalLoss(RobustLoss):
    """Normalized focal loss: NFL = FL_y / sum_k FL_k, FL_k = -(1 - p_k)^gamma log p_k.

    The focal weights (1 - p_k)^gamma are detached, as in the reference code. Ma et al.,
    "Normalized loss functions for deep learning with noisy labels", ICML 2020.
    """

    display = "NFL"
    paper = "Ma et al., ICML 2020"
    ranges = {"gamma": NON_NEGATIVE}

    def __init__(self, num_classes: int, reduction: str = "mean", gamma: float = 0.5):
        super().__init__(num_classes, reduction, gamma=gamma)

    def term(self, log_p: Tensor, targets: Tensor) -> Tensor:
        return normalized_focal(log_p, targets, self.gamma)


@register("nce_rce")
class NCEandRCE(WeightedPair):
    """Active-passive loss NCE+RCE = alpha NCE + beta RCE (see ``nce`` and ``rce``).

    Ma et al., "Normalized loss functions for deep learning with noisy labels", ICML 2020.
    """

    display = "NCE+RCE"
    paper = "Ma et al., ICML 2020"
    active = staticmethod(normalized_cross_entropy)
    passive = staticmethod(reverse_cross_entropy)

    def __init__(self, num_classes: int, reduction: str = "mean",
                 alpha: float = 1.0, beta: float = 1.0):
        super().__init__(num_classes, reduction, alpha=alpha, beta=beta)


@register("nce_mae")
class NCEandMAE(NCEandRCE):
    """Active-passive loss NCE+MAE = alpha NCE + beta (1 - p_y).

    Ma et al., "Normalized loss functions for deep learning with noisy labels", ICML 2020.
    """

    display = "NCE+MAE"
    passive = staticmethod(mean_absolute_error)


@register("nfl_rce")
class NFLandRCE(WeightedPair):
    """Active-passive loss NFL+RCE = alpha NFL + beta RCE (focal weights detached).

    Ma et al., "Normalized loss functions for deep learning with noisy labels", ICML 2020.
    """

    display = "NFL+RCE"
    paper = "Ma et al., ICML 2020"
    ranges = {**WeightedPair.ranges, "gamma": NON_NEGATIVE}
    passive = staticmethod(reverse_cross_entropy)

    def __init__(self, num_classes: int, reduction: str = "mean",
                 alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.5):
        super().__init__(num_classes, reduction, alpha=alpha, beta=beta, gamma=gamma)

    def active(self, log_p: Tensor, targets: Tensor) -> Tensor:
        return normalized_focal(log_p, targets, self.gamma)


class NCEandAsymmetric(WeightedPair):
    """alpha NCE + beta * an asymmetric passive loss of p_y (Zhou et al., ICML 2021)."""

    paper = "Zhou et al., ICML 2021"
    active = staticmethod(normalized_cross_entropy)


@register("nce_agce")
class NCEandAGCE(NCEandAsymmetric):
    """NCE+AGCE = alpha NCE + beta AGCE, AGCE = ((a + 1)^q - (a + p_y)^q) / q; a > 0, q > 0.

    Defaults are the paper's CIFAR-10 setting. Zhou et al., "Asymmetric loss functions for
    learning with noisy labels", ICML 2021.
    """

    display = "NCE+AGCE"
    ranges = {**WeightedPair.ranges, "a": POSITIVE, "q": POSITIVE}

    def __init__(self, num_classes: int, reduction: str = "mean", alpha: float = 1.0,
                 beta: float = 4.0, a: float = 6.0, q: float = 1.5):
        super().__init__(num_classes, reduction, alpha=alpha, beta=beta, a=a, q=q)

    def passive(self, log_p: Tensor, targets: Tensor) -> Tensor:
        p_y = target_probability(log_p, targets)
        return ((self.a + 1.0) ** self.q - (self.a + p_y) ** self.q) / self.q


@register("nce_aul")
class NCEandAUL(NCEandAsymmetric):
    """NCE+AUL = alpha NCE + beta AUL, AUL = ((a - p_y)^q - (a - 1)^q) / q; a > 1, q > 0.

    Defaults are the paper's CIFAR-10 setting. Zhou et al., "Asymmetric loss functions for
    learning with noisy labels", ICML 2021.
    """

    display = "NCE+AUL"
    ranges = {**WeightedPair.ranges, "a": ABOVE_ONE, "q": POSITIVE}

    def __init__(self, num_classes: int, reduction: str = "mean", alpha: float = 1.0,
                 beta: float = 4.0, a: float = 6.3, q: float = 1.5):
        super().__init__(num_classes, reduction, alpha=alpha, beta=beta, a=a, q=q)

    def passive(self, log_p: Tensor, targets: Tensor) -> Tensor:
        p_y = target_probability(log_p, targets)
        return ((self.a - p_y) ** self.q - (self.a - 1.0) ** self.q) / self.q


@register("nce_ael")
class NCEandAEL(NCEandAsymmetric):
    """NCE+AEL = alpha NCE + beta AEL, AEL = exp(-p_y / a); a > 0.

    Defaults are the paper's CIFAR-10 setting. Zhou et al., "Asymmetric loss functions for
    learning with noisy labels", ICML 2021.
    """

    display = "NCE+AEL"
    ranges = {**WeightedPair.ranges, "a": POSITIVE}

    def __init__(self, num_classes: int, reduction: str = "mean", alpha: float = 1.0,
                 beta: float = 4.0, a: float = 5.0):
        super().__init__(num_classes, reduction, alpha=alpha, beta=beta, a=a)

    def passive(self, log_p: Tensor, targets: Tensor) -> Tensor:
        return torch.exp(-target_probability(log_p, targets) / self.a)


@register("anl_ce")
class ANLCE(WeightedPair):
    """Active negative loss ANL-CE = alpha NCE + beta NNCE.

    NNCE = 1 - u_y / sum_k u_k with u_k = A + log max(p_k, min_prob), A = -log min_prob,
    min_prob = 1e-7. The paper's L1 weight penalty (delta) belongs to the trainer. The defaults
    alpha = beta = 1 are ours; the reference CIFAR-10 config uses alpha = beta = 5. Ye et al.,
    "Active negative loss functions for learning with noisy labels", NeurIPS 2023.
    """

    display = "ANL-CE"
    paper = "Ye et al., NeurIPS 2023"
    active = staticmethod(normalized_cross_entropy)
    passive = staticmethod(normalized_negative_cross_entropy)

    def __init__(self, num_classes: int, reduction: str = "mean",
                 alpha: float = 1.0, beta: float = 1.0):
        super().__init__(num_classes, reduction, alpha=alpha, beta=beta)


@register("anl_fl")
class ANLFL(WeightedPair):
    """Active negative loss ANL-FL = alpha NFL + beta NNFL (focal weights detached).

    NNFL = 1 - (A' - FL_y) / (C A' - sum_k FL_k), FL_k = -(1 - p_k)^gamma log p_k with log p_k
    clamped below at log min_prob, A' = -(1 - min_prob)^gamma log min_prob, min_prob = 1e-7.
    The defaults alpha = beta = 1 are ours; the reference CIFAR-10 config uses alpha = beta = 5
    (gamma = 0.5). Ye et al., "Active negative loss functions for learning with noisy labels",
    NeurIPS 2023.
    """

    display = "ANL-FL"
    paper = "Ye et al., NeurIPS 2023"
    ranges = {**WeightedPair.ranges, "gamma": NON_NEGATIVE}

    def __init__(self, num_classes: int, reduction: str = "mean",
                 alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.5):
        super().__init__(num_classes, reduction, alpha=alpha, beta=beta, gamma=gamma)

    def active(self, log_p: Tensor, targets: Tensor) -> Tensor:
        return normalized_focal(log_p, targets, self.gamma)

    def passive(self, log_p: Tensor, targets: Tensor) -> Tensor:
        return normalized_negative_focal(log_p, targets, self.gamma)


@register("anl_ce_er")
class ANLCEWithEntropyRegularizer(WeightedPair):
    """ANL-CE plus an entropy regularizer: alpha NCE + beta NNCE + lam (log C - H(pbar)).

    pbar = batch mean of p; log C - H(pbar) = log C + sum_k pbar_k log pbar_k >= 0 pushes the
    batch's average prediction towards uniform. It is one number per batch: with
    reduction="none" it is added to every sample. The default lam = 0.1 is ours; the reference
    configs use lam 2 (CIFAR-10, alpha = beta = 5) and 0.01 (CIFAR-100, alpha 10, beta 1).
    Ye et al., "Active negative loss functions for learning with noisy labels", NeurIPS 2023
    (code release).
    """

    display = "ANL-CE-ER"
    paper = "Ye et al., NeurIPS 2023"
    ranges = {**WeightedPair.ranges, "lam": NON_NEGATIVE}
    active = staticmethod(normalized_cross_entropy)
    passive = staticmethod(normalized_negative_cross_entropy)

    def __init__(self, num_classes: int, reduction: str = "mean",
                 alpha: float = 1.0, beta: float = 1.0, lam: float = 0.1):
        super().__init__(num_classes, reduction, alpha=alpha, beta=beta, lam=lam)

    def term(self, log_p: Tensor, targets: Tensor) -> Tensor:
        return super().term(log_p, targets) + self.lam * prior_entropy_gap(log_p)


@register("ls")
class LabelSmoothing(RobustLoss):
    """Label smoothing: LS = -(1 - eps) log p_y - (eps / C) sum_k log p_k, eps in [0, 1).

    Szegedy et al., "Rethinking the Inception architecture for computer vision", CVPR 2016.
    """

    display = "LS"
    paper = "Szegedy et al., CVPR 2016"
    ranges = {"epsilon": HALF_OPEN_UNIT}

    def __init__(self, num_classes: int, reduction: str = "mean", epsilon: float = 0.1):
        super().__init__(num_classes, reduction, epsilon=epsilon)

    def term(self, log_p: Tensor, targets: Tensor) -> Tensor:
        return ((1.0 - self.epsilon) * cross_entropy(log_p, targets)
                - self.epsilon * log_p.mean(dim=1))


@register("drainage")
class DrainageLoss(RobustLoss):
    """Drainage loss: log(1 + alpha (p_d + p_J) / p_t + beta p_J / p_d).

    The model has C + 1 outputs; the last is the drainage logit z_d. p is the softmax over all
    C + 1 outputs, t the target, J the other C - 1 classes (drainage excluded), p_J their total.
    In logit space:

        loss = logsumexp(0, logsumexp(z_d, z_J) - z_t + log alpha, logsumexp(z_J) - z_d + log beta)

    alpha > 0; beta > 0, or None for 1 / alpha. Moving probability mass from J to t, or from
    J to d, never raises the loss (the paper's two propositions). Taha, Montavon, Körber,
    "Drainage: a unifying framework for addressing class uncertainty", arXiv 2512.03182, 2025.
    """

    display = "Drainage"
    paper = "Taha, Montavon, Körber, arXiv 2512.03182, 2025"
    extra_outputs = 1
    ranges = {"alpha": POSITIVE, "beta": POSITIVE}
    derived = {"beta": "1/alpha"}

    def __init__(self, num_classes: int, reduction: str = "mean",
                 alpha: float = 1.0, beta: float | None = None):
        super().__init__(num_classes, reduction, alpha=alpha, beta=beta)

    @classmethod
    def derive_params(cls, params: dict) -> dict:
        if params.get("beta") is None:
            return {**params, "beta": 1.0 / params["alpha"]}
        return params

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        z_d = logits[:, -1]
        z_t = _pick(logits, targets)
        is_target = F.one_hot(targets, logits.shape[1]).bool()
        not_target = logits.masked_fill(is_target, -math.inf)  # the columns of J, then d
        log_drain_or_other = torch.logsumexp(not_target, dim=1)
        log_other = torch.logsumexp(not_target[:, :-1], dim=1)
        terms = torch.stack([
            torch.zeros_like(z_t),
            log_drain_or_other - z_t + math.log(self.alpha),
            log_other - z_d + math.log(self.beta),
        ])
        return torch.logsumexp(terms, dim=0)

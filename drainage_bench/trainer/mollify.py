"""Supervised mollification: noise or blur each training image by a random amount and smooth its
label by the matching amount (Heinonen, Tran, Kampffmeyer, Filippone, "Robust Classification by
Coupling Data Mollification with Label Smoothing", AISTATS 2025, arXiv 2406.01494).

Per training sample (all batched on the device, every draw from one seeded torch.Generator):

- a role, uniform over the configured roles (default clean, noise, blur: 1/3 each);
- a time t ~ Beta(1, beta) (default beta = 2), t = 0 for clean samples.

On the *normalised* image x (after augmentation and normalisation):

- noise (the variance-preserving schedule of diffusion models):
      x_t = cos(pi t / 2) x + sin(pi t / 2) eps,   eps ~ N(0, I)
      gamma = (sin^2(pi t / 2))^npow               (= 1 / (1 + SNR)^npow, SNR = cot^2(pi t / 2))
- blur (heat dissipation in the DCT domain, per channel):
      x_t = IDCT( exp(-Lambda sigma^2 / 2) * DCT(x) ),  Lambda_kl = (pi k / R)^2 + (pi l / R)^2
      sigma = 0.3^(1 - t) R^t                       (k, l = 0..R-1; R = W, the last axis: the width)
      gamma = t^bpow
  DCT is the orthonormal 2-D DCT-II, ``D x D^T`` with the R x R matrix D built once per image
  size; IDCT is ``D^T u D``. R is the last axis as in the paper's code (``res[-1]``, square
  images there). Rectangular H x W images use one matrix per side and Lambda_kl = (pi k / H)^2
  + (pi l / W)^2 (k = 0..H-1, l = 0..W-1); sigma still grows to R = W.

Targets (``target``):

- ``classes`` (the paper): y = gamma / K + (1 - gamma) onehot(label) over the K classes;
- ``sink`` (the paper code's extra output, the bridge to the drainage loss): y = (1 - gamma)
  onehot(label) + gamma e_d, the smoothing mass on the drainage output d (C + 1 columns); only
  for losses with a drainage column.

What each loss trains on these soft targets is `losses.RobustLoss.soft_forward`'s business
(soft-target cross entropy for ``ce``).

The paper's code computes NLL and ECE on the open (K+1)-way softmax (the sink output included)
for its sink variant, while this project evaluates every model on the closed softmax over the K
classes (`loop._evaluate`), so Drainage-sink NLL/ECE are not directly comparable with the
paper's numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from drainage_bench.errors import UserError, did_you_mean

ROLES = ("clean", "noise", "blur")
TARGETS = ("classes", "sink")
BLUR_SIGMA_MIN = 0.3


def noise_schedule(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, s) = (cos(pi t / 2), sin(pi t / 2)): x_t = a x + s eps, a^2 + s^2 = 1."""
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


def noise_gamma(t: torch.Tensor, npow: float = 1.0) -> torch.Tensor:
    """Label smoothing of a noised sample: (sin^2(pi t / 2))^npow."""
    return torch.sin(0.5 * math.pi * t).square().pow(npow)


def blur_sigma(t: torch.Tensor, side: int) -> torch.Tensor:
    """Blur scale sigma = 0.3^(1 - t) R^t (log-linear from 0.3 px to R = ``side``, the last axis W)."""
    return torch.exp((1 - t) * math.log(BLUR_SIGMA_MIN) + t * math.log(side))


def blur_gamma(t: torch.Tensor, bpow: float = 1.0) -> torch.Tensor:
    """Label smoothing of a blurred sample: t^bpow."""
    return t.pow(bpow)


@lru_cache(maxsize=16)
def _dct_matrix_cpu(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def dct_matrix(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal DCT-II matrix: D[k, i] = c_k sqrt(2/n) cos(pi (2i + 1) k / (2n)), c_0 = 1/sqrt 2.

    Built once per size (cached); D D^T = I, so the inverse transform is D^T.
    """
    return _dct_matrix_cpu(n).to(device=device, dtype=dtype)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two axes: D_H x D_W^T."""
    dh = dct_matrix(x.shape[-2], x.device, x.dtype)
    dw = dct_matrix(x.shape[-1], x.device, x.dtype)
    return dh @ x @ dw.T


def idct2(u: torch.Tensor) -> torch.Tensor:
    """Inverse of `dct2`: D_H^T u D_W."""
    dh = dct_matrix(u.shape[-2], u.device, u.dtype)
    dw = dct_matrix(u.shape[-1], u.device, u.dtype)
    return dh.T @ u @ dw


def heat_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Heat dissipation of images x (B, C, H, W) for time sigma_b^2 / 2 each:
    IDCT(exp(-Lambda sigma^2 / 2) DCT(x)), Lambda_kl = (pi k / H)^2 + (pi l / W)^2."""
    h, w = x.shape[-2:]
    fh = (math.pi * torch.arange(h, device=x.device, dtype=x.dtype) / h).square()
    fw = (math.pi * torch.arange(w, device=x.device, dtype=x.dtype) / w).square()
    lam = fh[:, None] + fw[None, :]
    decay = torch.exp(-lam * (sigma.to(x.dtype).square() / 2)[:, None, None, None])
    return idct2(decay * dct2(x))


def parse_roles(text: str | tuple | list) -> tuple[str, ...]:
    """``"clean,noise,blur"`` -> ("clean", "noise", "blur"); unknown or repeated roles are refused."""
    if not isinstance(text, (str, tuple, list)):
        raise UserError(f"mollify_roles={text!r} is invalid: a comma-separated list from {', '.join(ROLES)}")
    roles = tuple(r.strip() for r in text.split(",")) if isinstance(text, str) else tuple(text)
    bad = [r for r in roles if r not in ROLES]
    if not roles or bad:
        raise UserError(f"mollify_roles={text!r} is invalid: unknown role {bad[0] if bad else '(none)'!r}; "
                        f"a comma-separated list from {', '.join(ROLES)}")
    if len(set(roles)) != len(roles):
        raise UserError(f"mollify_roles={text!r} repeats a role; list each role once")
    return roles


@dataclass(frozen=True)
class Mollifier:
    """``mollifier(x, labels, generator) -> (x_t, soft_targets)`` for one training batch."""

    num_classes: int
    roles: tuple[str, ...] = ROLES
    beta: float = 2.0
    npow: float = 1.0
    bpow: float = 1.0
    target: str = "classes"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise UserError(f"mollify_beta={self.beta} is invalid: a number > 0 (t ~ Beta(1, beta))")
        for name in ("npow", "bpow"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"mollify_{name}={value} is invalid: a number > 0")
        if self.target not in TARGETS:
            raise UserError(f"mollify_target={self.target!r} is invalid; {did_you_mean(self.target, TARGETS)}")
        parse_roles(self.roles)

    def draw(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(role index into ``roles`` (B,), t (B,)): roles uniform, t ~ Beta(1, beta), 0 when clean.

        Beta(1, beta) by inversion: t = 1 - (1 - u)^(1 / beta), u ~ U(0, 1) from `generator`.
        """
        device = generator.device
        role = torch.randint(len(self.roles), (batch,), generator=generator, device=device)
        u = torch.rand(batch, generator=generator, device=device)
        t = 1 - (1 - u).pow(1.0 / self.beta)
        if "clean" in self.roles:
            t = torch.where(role == self.roles.index("clean"), torch.zeros_like(t), t)
        return role, t

    def __call__(self, x: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        role, t = self.draw(x.shape[0], generator)
        t = t.to(x.dtype)
        gamma = torch.zeros_like(t)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        out = x.clone()
        if "noise" in self.roles:  # only the rows of the role are computed (an index, no Python loop)
            rows = (role == self.roles.index("noise")).nonzero()[:, 0]
            a, s = noise_schedule(t[rows])
            out[rows] = a[:, None, None, None] * x[rows] + s[:, None, None, None] * eps[rows]
            gamma[rows] = noise_gamma(t[rows], self.npow)
        if "blur" in self.roles:
            rows = (role == self.roles.index("blur")).nonzero()[:, 0]
            out[rows] = heat_blur(x[rows], blur_sigma(t[rows], x.shape[-1]))
            gamma[rows] = blur_gamma(t[rows], self.bpow)
        return out, soft_targets(labels, gamma, self.num_classes, self.target)


def soft_targets(labels: torch.Tensor, gamma: torch.Tensor, num_classes: int, target: str = "classes") -> torch.Tensor:
    """``classes``: gamma / K + (1 - gamma) onehot, (B, K); ``sink``: (1 - gamma) onehot + gamma e_d, (B, K + 1)."""
    gamma = gamma.float()[:, None]
    width = num_classes + (target == "sink")
    onehot = torch.nn.functional.one_hot(labels, width).float()
    if target == "sink":
        onehot[:, -1] = 0.0
        return (1 - gamma) * onehot + gamma * torch.nn.functional.one_hot(
            torch.full_like(labels, num_classes), width).float()
    return gamma / num_classes + (1 - gamma) * onehot


def from_config(config, num_classes: int) -> Mollifier | None:
    """The trial's mollifier, or None when ``mollify`` is off."""
    if not config.mollify:
        return None
    return Mollifier(num_classes, parse_roles(config.mollify_roles), config.mollify_beta, config.mollify_npow,
                     config.mollify_bpow, config.mollify_target)

"""Label-noise generators: clean labels in, ``NoisyLabels`` out.

Noise is written as ``TYPE[:RATE]`` (``parse_noise``): ``none``, ``sym:0.4``, ``asym:0.4``,
``instance:0.4``, ``human``, ``human:KEY`` or ``file:PATH`` (a label file someone else made; see
``noise_fields`` and ``drainage_bench.noise_files``). Each type is a generator registered in
``NOISE_TYPES``; ``make_noisy_labels`` validates, runs the generator and measures what it did
(the realized transition matrix and noise rate). Generators are deterministic functions of the
seed and never touch the global numpy / torch random state.

Apply noise to the whole training set once, before any train/validation split, so that the
split, the seed and the noise are independent choices (and the CIFAR-N files, which cover the
50,000 training images in their original order, line up with the labels).
"""
from __future__ import annotations

import math
import numbers
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import stats

from drainage_bench import noise_files
from drainage_bench.catalog import RATED_TYPES  # the noise types whose text form carries a rate
from drainage_bench.errors import UserError, did_you_mean
from drainage_bench.trainer.data import ARRAY_GLOBALS


@dataclass(frozen=True)
class NoisyLabels:
    """The noisy training labels and what the noise did to them.

    ``transition[i, j]`` is the realized P(noisy = j | clean = i): counts over the samples of
    clean class i, divided by their number (an identity row for a class with no samples).
    """

    labels: torch.Tensor  # int64 (N,), noisy labels, on CPU
    is_noisy: torch.Tensor  # bool (N,), labels != clean
    transition: torch.Tensor  # float64 (C, C), rows sum to 1
    realized_rate: float  # fraction of labels changed

    def record(self, clean, dataset: str, noise: str, rate: float) -> dict:
        """These labels as the results store keeps them (``noise_files.noise_record``): content
        hash, noisy and clean labels of the whole training set, transition, nominal and realized rate."""
        clean = clean.cpu().numpy() if isinstance(clean, torch.Tensor) else np.asarray(clean)
        return noise_files.noise_record(
            self.labels.numpy(), clean, self.transition.numpy(), noise_files.nominal_rate(noise, rate, RATED_TYPES),
            self.realized_rate, dataset, noise)


@dataclass(frozen=True)
class NoiseRequest:
    """Everything a generator may need; each generator reads the fields it uses."""

    clean: np.ndarray  # int64 (N,)
    rate: float
    num_classes: int
    dataset: str | None
    seed: int
    images: object | None
    key: str | None
    data_root: str | Path | None
    path: str | None = None  # the label file of file noise


NOISE_TYPES: dict[str, Callable[[NoiseRequest], np.ndarray]] = {}
VALID_FORMS = "valid: none, sym:RATE, asym:RATE, instance:RATE, human, human:KEY (RATE in [0, 1)), file:PATH"


def register(name: str):
    """Add a generator ``f(NoiseRequest) -> noisy int64 array`` to ``NOISE_TYPES``."""

    def add(generator):
        NOISE_TYPES[name] = generator
        return generator

    return add


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def parse_noise(text: str) -> tuple[str, float, str | None]:
    """``"sym:0.4"`` -> ``("sym", 0.4, None)``; ``"human:aggre_label"`` -> ``("human", 0.0, "aggre_label")``.

    ``none`` and ``human`` take no rate (0.0); ``human`` optionally takes a label key (None: the
    dataset's default). The rate is checked against [0, 1) and a key against every CIFAR-N key;
    call ``validate_noise`` again with the dataset once it is known.
    """
    name, sep, arg = str(text).strip().partition(":")
    name, arg = name.strip().lower(), arg.strip()
    if name == "none" and not sep:
        parsed = "none", 0.0, None
    elif name == "human" and (arg or not sep):
        parsed = "human", 0.0, arg or None
    elif name in RATED_TYPES and arg:
        try:
            parsed = name, float(arg), None
        except ValueError:
            raise UserError(f"noise {text!r}: rate {arg!r} is not a number; {VALID_FORMS}") from None
    else:
        raise UserError(f"cannot read noise {text!r}; {VALID_FORMS}")
    try:
        validate_noise(parsed[0], parsed[1], key=parsed[2])
    except UserError as err:  # the form is right; a human key's error lists the keys, a rate's needs the forms
        forms = "" if parsed[0] == "human" else f"; {VALID_FORMS}"
        raise UserError(f"noise {text!r}: {err}{forms}") from None
    return parsed


def noise_fields(text: str) -> dict:
    """``--noise`` text as TrialConfig fields: ``{noise, noise_rate, noise_key}`` (parse_noise), and
    for ``file:PATH`` ``{noise: "file", noise_file: <absolute PATH>}`` (the file is read and checked
    now; its hash becomes the noise_key when the config is built)."""
    name, sep, arg = str(text).strip().partition(":")
    if name.strip().lower() != "file":
        noise_type, rate, key = parse_noise(text)
        return {"noise": noise_type, "noise_rate": rate, "noise_key": key}
    if not arg.strip():
        raise UserError(f"noise {text!r}: give the label file, e.g. --noise file:labels.npz; {VALID_FORMS}")
    path = str(Path(arg.strip()).expanduser().absolute())
    noise_files.read_label_file(path)
    return {"noise": "file", "noise_rate": 0.0, "noise_key": None, "noise_file": path}


def validate_noise(noise_type, rate, num_classes=None, dataset=None, key=None, path=None) -> str | None:
    """Raise ``UserError`` for an unknown type, a rate outside [0, 1) (sym, asym, instance), a
    rate on none / human / file, an asym dataset without a class map, a human dataset / key
    without a label file, or a bad label file. Returns the label key (human noise: the dataset's
    default when `key` is None; file noise: the hash prefix of the file's labels, which must equal
    `key` when one is given).

    Arguments left as None are not checked (so a spec can be checked before its dataset is).
    """
    if noise_type not in NOISE_TYPES:
        raise UserError(f"unknown noise type {noise_type!r}; {did_you_mean(noise_type, NOISE_TYPES)}")
    if num_classes is not None and not (isinstance(num_classes, int) and num_classes >= 2):
        raise UserError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if noise_type in RATED_TYPES and not (isinstance(rate, numbers.Real) and 0.0 <= rate < 1.0):
        raise UserError(f"{noise_type} noise rate must be in [0, 1), got {rate!r}")
    if noise_type not in RATED_TYPES and rate:
        raise UserError(f"noise {noise_type!r} takes no rate: noise_rate={rate!r}, leave it 0")
    if path is not None and noise_type != "file":
        raise UserError(f"noise_file={path!r} is only for noise=file (a label file), not {noise_type}")
    if noise_type == "file":
        return _file_key(path, dataset, num_classes, key)
    if key is not None and noise_type != "human":
        raise UserError(f"only human noise takes a label key, got {noise_type}:{key}")
    if noise_type == "asym" and dataset is not None:
        asym_map(dataset, num_classes)
    if noise_type == "human":
        return human_key(dataset, key)
    return key


def _file_key(path, dataset, num_classes, key) -> str | None:
    if path is None:
        if key is None:
            raise UserError("file noise needs a label file: --noise file:PATH, or path = \"...\" in the spec's "
                            "[[noise]] entry")
        return key  # checked against the file when the trainer reads it
    if dataset is None:
        noise_files.read_label_file(path)
        return key
    found = noise_files.file_key(path, dataset, num_classes)
    if key is not None and key != found:
        raise UserError(f"label file {path} has changed: its labels hash to {found}, the trial names {key}; "
                        "restore the file or drop noise_key to train on the new labels")
    return found


def check_label_files(configs) -> None:
    """Before anything runs or is written: every label file of `configs` (file noise) has one label
    per training sample of its dataset (loads each dataset once)."""
    from drainage_bench.trainer.data import load_dataset, resolve_data_root

    sizes: dict[tuple, int] = {}
    for c in configs:
        if c.noise != "file":
            continue
        where = (c.dataset, str(resolve_data_root(c.data_root)))
        if where not in sizes:
            sizes[where] = len(load_dataset(c.dataset, resolve_data_root(c.data_root)).train_labels)
        noise_files.check_labels(c.noise_file, noise_files.read_label_file(c.noise_file), n_train=sizes[where])


def asym_map(dataset: str | None, num_classes: int | None = None) -> dict[int, int]:
    """The asym class map of ``dataset``; ``UserError`` if it has none or it does not fit."""
    if dataset not in ASYM_MAPS:
        raise UserError(
            f"asym noise has no class map for dataset {dataset!r}; datasets with one: "
            + ", ".join(sorted(ASYM_MAPS))
        )
    mapping = ASYM_MAPS[dataset]
    if num_classes is not None and max(max(mapping), max(mapping.values())) >= num_classes:
        raise UserError(f"the asym map of {dataset} needs {max(mapping) + 1}+ classes, got {num_classes}")
    return mapping


def human_key(dataset: str | None, key: str | None) -> str | None:
    """The CIFAR-N label key to read (``key`` or the dataset's default); ``UserError`` if invalid.

    With ``dataset`` None only the key is checked (against every dataset's keys).
    """
    if dataset is None:
        valid = {k for keys in HUMAN_KEYS.values() for k in keys}
        if key is not None and key not in valid:
            raise UserError(f"unknown human label key {key!r}; {did_you_mean(key, valid)}")
        return key
    if dataset not in HUMAN_KEYS:
        raise UserError(
            f"human noise needs a CIFAR-N dataset, got {dataset!r}; {did_you_mean(dataset, HUMAN_KEYS)}"
        )
    if key is None:
        return HUMAN_KEYS[dataset][0]
    if key not in HUMAN_KEYS[dataset]:
        raise UserError(f"unknown {dataset} label key {key!r}; {did_you_mean(key, HUMAN_KEYS[dataset])}")
    return key


# ---------------------------------------------------------------------------------------------
# The entry point


def make_noisy_labels(
    labels,
    noise_type: str,
    rate: float,
    num_classes: int,
    dataset: str | None = None,
    seed: int = 0,
    images=None,
    key: str | None = None,
    data_root=None,
    path: str | None = None,
) -> NoisyLabels:
    """Corrupt the clean ``labels`` (int tensor or array, shape (N,)) with one noise type.

    ``images`` (N, ...) are needed by ``instance`` only, ``data_root`` and ``key`` by ``human``
    only (whose ``rate`` is ignored), ``path`` (the label file) by ``file`` only. The result is
    the same for a given seed whatever the global random state and whatever device ``images`` live on.
    """
    validate_noise(noise_type, rate, num_classes, dataset, key, path)
    clean = _as_clean_labels(labels, num_classes)
    request = NoiseRequest(clean, float(rate), num_classes, dataset, int(seed), images, key, data_root, path)
    noisy = NOISE_TYPES[noise_type](request)
    return NoisyLabels(
        labels=torch.from_numpy(noisy),
        is_noisy=torch.from_numpy(noisy != clean),
        transition=torch.from_numpy(realized_transition(clean, noisy, num_classes)),
        realized_rate=float(np.mean(noisy != clean)) if len(clean) else 0.0,
    )


def _as_clean_labels(labels, num_classes: int) -> np.ndarray:
    """A fresh int64 numpy copy of ``labels``, checked to be 1-D with values in [0, C)."""
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise UserError(f"labels must be a 1-D integer array, got shape {array.shape} of {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise UserError(
            f"labels must lie in [0, {num_classes}), found {array.min()}..{array.max()}; check num_classes"
        )
    return array.astype(np.int64, copy=True)


def realized_transition(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """T[i, j] = #(clean = i, noisy = j) / #(clean = i); identity row where #(clean = i) = 0."""
    counts = np.bincount(clean * num_classes + noisy, minlength=num_classes**2)
    counts = counts.reshape(num_classes, num_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.where(totals > 0, counts / np.maximum(totals, 1.0), np.eye(num_classes))


# ---------------------------------------------------------------------------------------------
# none, sym


@register("none")
def no_noise(request: NoiseRequest) -> np.ndarray:
    """The clean labels unchanged: T = I."""
    return request.clean.copy()


@register("sym")
def symmetric_noise(request: NoiseRequest) -> np.ndarray:
    """Symmetric (uniform) noise, as in Ma et al., "Normalized Loss Functions for Deep Learning
    with Noisy Labels", ICML 2020 (reference: dataset.py of HanxunH/Active-Passive-Losses).

    In each clean class c exactly floor(r n_c) of its n_c samples, chosen at random, are flipped,
    each to a class drawn uniformly among the C - 1 OTHER classes, so the expected transition is

        T = (1 - r) I + r / (C - 1) (1 1^T - I)

    (diagonal 1 - r, off-diagonal r / (C - 1)); the true class is never a flip target and the
    realized rate is r up to the floor. Like asym, the count per class is exact, as in the
    reference codes; they differ only in rounding (Ma et al.: int(int(r N) / C) per class; Ye
    et al.'s ANL code: floor(r / (C - 1) n_c) per off-diagonal cell, which loses up to
    (C - 1) / n_c of the rate, 0.008 on CIFAR-100). We floor r n_c per class.
    """
    rng = np.random.default_rng(request.seed)
    clean, classes = request.clean, request.num_classes
    noisy = clean.copy()
    for label in range(classes):
        members = np.flatnonzero(clean == label)
        chosen = rng.choice(members, size=_flip_count(request.rate, members.size), replace=False)
        shift = rng.integers(1, classes, size=chosen.size)  # 1..C-1: never back to the clean class
        noisy[chosen] = (label + shift) % classes
    return noisy


def _flip_count(rate: float, size: int) -> int:
    """floor(rate * size); the small epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 at 29."""
    return math.floor(rate * size + 1e-9)


# ---------------------------------------------------------------------------------------------
# file


@register("file")
def file_noise(request: NoiseRequest) -> np.ndarray:
    """Labels someone else made: the label file's labels, one per training sample in the dataset's
    order (``noise_files.read_label_file``). The rate is ignored; the realized rate and transition
    are measured against the clean labels. The file's content hash must still be ``key`` (the
    trial's identity), so a file changed after the trial was planned is refused."""
    if request.path is None:
        raise UserError("file noise needs the label file's path (noise_file)")
    labels = noise_files.read_label_file(request.path)
    noise_files.check_labels(request.path, labels, request.num_classes, n_train=request.clean.shape[0])
    found = noise_files.labels_hash(labels, request.dataset)[:noise_files.FILE_KEY_CHARS]
    if request.key is not None and found != request.key:
        raise UserError(f"label file {request.path} has changed: its labels hash to {found}, the trial names "
                        f"{request.key}")
    return labels.copy()


# ---------------------------------------------------------------------------------------------
# asym


def _cifar100_map() -> dict[int, int]:
    """CIFAR-100: i -> the next class in its block of 5 consecutive indices (cyclic)."""
    return {i: (i // 5) * 5 + (i % 5 + 1) % 5 for i in range(100)}


_DIGITS_MAP = {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}
_CIFAR10_MAP = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}  # truck->automobile, bird->airplane, cat<->dog, deer->horse
# Fashion-MNIST (0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt,
# 7 Sneaker, 8 Bag, 9 Ankle boot): look-alike classes, five sources like MNIST and CIFAR-10:
# T-shirt/top <-> Shirt (swap), Pullover -> Coat, Sandal -> Sneaker, Ankle boot -> Sneaker.
_FASHION_MNIST_MAP = {0: 6, 6: 0, 2: 4, 5: 7, 9: 7}

ASYM_MAPS: dict[str, dict[int, int]] = {
    "mnist": _DIGITS_MAP,
    "digits": _DIGITS_MAP,
    "fashion_mnist": _FASHION_MNIST_MAP,
    "cifar10": _CIFAR10_MAP,
    "cifar10n": _CIFAR10_MAP,
    "cifar100": _cifar100_map(),
    "cifar100n": _cifar100_map(),
}


@register("asym")
def asymmetric_noise(request: NoiseRequest) -> np.ndarray:
    """Class-dependent "asymmetric" noise (Patrini et al., CVPR 2017; Ma et al., ICML 2020).

    For every source class c of the dataset's map ``ASYM_MAPS[dataset]`` (c -> m(c)), exactly
    floor(r n_c) of its n_c samples, chosen at random, are relabelled m(c); the other classes are
    untouched. So T[c, m(c)] = floor(r n_c) / n_c ~ r and T[c, c] = 1 - T[c, m(c)]. The samples
    are chosen from the CLEAN labels, so in a swap (cat <-> dog) both directions flip the stated
    fraction and no sample flips twice. With s balanced source classes out of C the overall rate
    is r s / C (CIFAR-10, r = 0.4: 0.2).

    Deliberate deviation: the CIFAR-10 reference code (HanxunH/Active-Passive-Losses,
    dataset.py) relabels in place, class after class, so its dog step (5 -> 3) draws from the
    dogs AND the cats just relabelled dog, sending some of them back: at r = 0.4 about 24% of cats
    end up noisy and 18.4% of all labels, not the stated 40% and 20%. Its MNIST and CIFAR-100
    asym draw each label independently (T applied per sample); the ANL code uses exact counts.
    """
    mapping = asym_map(request.dataset, request.num_classes)
    rng = np.random.default_rng(request.seed)
    noisy = request.clean.copy()
    for source in sorted(mapping):
        members = np.flatnonzero(request.clean == source)
        chosen = rng.choice(members, size=_flip_count(request.rate, members.size), replace=False)
        noisy[chosen] = mapping[source]
    return noisy


# ---------------------------------------------------------------------------------------------
# instance

INSTANCE_STD = 0.1  # std of the per-sample flip rate (the reference code's norm_std)
_ROWS_PER_MATMUL = 2048  # rows of images per matmul: bounds memory at D = 3072, N = 50k


@register("instance")
def instance_noise(request: NoiseRequest) -> np.ndarray:
    """Instance-dependent (part-dependent) noise: Xia et al., "Part-dependent Label Noise:
    Towards Instance-dependent Label Noise", NeurIPS 2020 (reference: get_instance_noisy_label).

    For sample i with clean label y_i and image x_i flattened and scaled to [0, 1] (uint8 / 255):

        q_i ~ N(r, 0.1^2) truncated to [0, 1]            (per-sample flip rate)
        W   ~ N(0, 1)^(C x D x C)                         (random class-wise projections)
        s_i = x_i W[y_i],  s_i[y_i] = -inf
        P(noisy = j | x_i) = q_i softmax(s_i)_j  (j != y_i),    P(noisy = y_i | x_i) = 1 - q_i

    and the noisy label is drawn from that row by inverse CDF. The mean flip rate is E[q] = r
    for r >~ 0.3; below, the truncation at 0 lifts it (r = 0.1: ~0.129; r = 0: ~0.080), which
    the realized rate records.

    Deliberate deviation: the reference projects the raw pixel values (0..255; its data.py feeds
    the .npy images as floats), which makes softmax(s_i) almost one-hot; we scale to [0, 1] as
    the benchmark's issue specifies, so the flips spread more over the other classes. W is
    N(0, 1) without normalisation in both.

    Random numbers, all from ``default_rng(seed)`` on the CPU in this order: q (N, float64), W
    (C, D, C, float32), u (N uniforms, float64). Only the matmuls and the sampling run on the
    images' device, in float64, so a seed gives the same labels on CPU and GPU.
    """
    images = _flat_images(request.images, request.clean.shape[0])
    clean, classes, rate = request.clean, request.num_classes, request.rate
    rng = np.random.default_rng(request.seed)
    low, high = (0.0 - rate) / INSTANCE_STD, (1.0 - rate) / INSTANCE_STD
    flip_rate = stats.truncnorm.rvs(
        low, high, loc=rate, scale=INSTANCE_STD, size=clean.shape[0], random_state=rng
    )
    projections = torch.from_numpy(rng.standard_normal((classes, images.shape[1], classes), dtype=np.float32))
    uniforms = rng.random(clean.shape[0])

    device = images.device
    scores = _class_projections(images, torch.from_numpy(clean), projections)
    rows = torch.arange(clean.shape[0], device=device)
    target = torch.from_numpy(clean).to(device)
    q = torch.from_numpy(flip_rate).to(device)
    scores[rows, target] = -math.inf
    probs = q[:, None] * torch.softmax(scores, dim=1)
    probs[rows, target] = 1.0 - q
    cdf = torch.cumsum(probs, dim=1)
    drawn = (cdf <= torch.from_numpy(uniforms).to(device)[:, None]).sum(dim=1).clamp_(max=classes - 1)
    return drawn.cpu().numpy().astype(np.int64)


def _flat_images(images, count: int) -> torch.Tensor:
    """Images (N, ...) as a (N, D) tensor on their own device: uint8 as is, floats in [0, 1]."""
    if images is None:
        raise UserError("instance noise needs the training images (images=None was given)")
    images = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if images.ndim < 2 or images.shape[0] != count:
        raise UserError(
            f"instance noise needs {count} images of shape (N, ...), got shape {tuple(images.shape)}"
        )
    in_unit_range = images.numel() == 0 or bool(images.min() >= 0 and images.max() <= 1)
    if images.dtype != torch.uint8 and not (images.is_floating_point() and in_unit_range):
        raise UserError(f"instance noise needs uint8 images or floats in [0, 1], got {images.dtype}")
    return images.reshape(count, -1)


def _class_projections(images: torch.Tensor, clean: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """s_i = (x_i / 255) W[y_i] for all i, as float64 (N, C) on the images' device.

    Grouped by clean class (one matmul per class and chunk of rows), not per sample.
    """
    device, classes = images.device, projections.shape[0]
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    scores = torch.empty(clean.shape[0], classes, dtype=torch.float64, device=device)
    for label in range(classes):
        members = torch.nonzero(clean == label).squeeze(1).to(device)
        weights = projections[label].to(device, torch.float64)
        for chunk in members.split(_ROWS_PER_MATMUL):
            scores[chunk] = (images[chunk].to(torch.float64) / scale) @ weights
    return scores


# ---------------------------------------------------------------------------------------------
# human (CIFAR-N)

HUMAN_KEYS: dict[str, tuple[str, ...]] = {
    "cifar10n": ("worse_label", "aggre_label", "random_label1", "random_label2", "random_label3"),
    "cifar100n": ("noisy_label",),
}
_HUMAN_FILES = {"cifar10n": ("CIFAR-10_human", 10), "cifar100n": ("CIFAR-100_human", 100)}
_HUMAN_SIZE = 50_000  # the CIFAR training set
_HUMAN_HELP = "get CIFAR-10_human / CIFAR-100_human (.npz or .pt) from github.com/UCSC-REAL/cifar-10-100n"


@register("human")
def human_noise(request: NoiseRequest) -> np.ndarray:
    """Real human label noise: CIFAR-10N / CIFAR-100N (Wei et al., "Learning with Noisy Labels
    Revisited: A Study Using Real-World Human Annotations", ICLR 2022).

    The noisy labels are the file's ``key`` column; the rate is ignored. The file's clean labels
    must equal ``labels`` (same images, same order), so the realized rate is measured against them.
    """
    noisy, _ = load_human_labels(
        request.dataset, request.data_root, request.key, expected_clean=request.clean
    )
    return noisy


def load_human_labels(dataset: str, data_root, key: str | None = None, expected_clean=None):
    """(noisy, clean) int64 arrays of shape (50000,) from ``<data_root>/CIFAR-N/``.

    Reads ``CIFAR-10_human`` (cifar10n) or ``CIFAR-100_human`` (cifar100n), preferring the
    ``.npz`` (no unpickling) over the published ``.pt`` (read with ``weights_only=True`` and only
    numpy arrays allowed). ``key`` None is the dataset's default (worse_label, noisy_label).
    ``expected_clean``, when given, must equal the file's ``clean_label``.
    """
    key = human_key(dataset, key)
    if data_root is None:
        raise UserError(f"human noise ({dataset}) needs a data root holding CIFAR-N/; {_HUMAN_HELP}")
    stem, classes = _HUMAN_FILES[dataset]
    path = _human_file(Path(data_root) / "CIFAR-N", stem)
    columns = _read_npz(path, key) if path.suffix == ".npz" else _read_pt(path, key)
    noisy, clean = (_check_column(path, name, columns[name], classes) for name in (key, "clean_label"))
    if expected_clean is not None:
        if isinstance(expected_clean, torch.Tensor):
            expected_clean = expected_clean.cpu()
        expected = np.asarray(expected_clean)
        if expected.shape != clean.shape:
            raise UserError(f"{path} has {clean.shape[0]} labels but the dataset has {expected.shape[0]}; "
                            "human noise needs the full CIFAR training set, before any split")
        mismatches = int(np.sum(expected != clean))
        if mismatches:
            raise UserError(f"{path}: clean_label differs from the dataset's labels at {mismatches} images; "
                            "the images are in another order than torchvision's CIFAR train set")
    return noisy, clean


def _human_file(folder: Path, stem: str) -> Path:
    for suffix in (".npz", ".pt"):
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    raise UserError(f"missing {folder / stem}.npz (or .pt); {_HUMAN_HELP} into {folder}")


def _read_npz(path: Path, key: str) -> dict[str, np.ndarray]:
    """The ``key`` and ``clean_label`` arrays of an .npz, with no unpickling."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            _require_keys(path, key, archive.files)
            return {name: archive[name] for name in (key, "clean_label")}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(
            f"cannot read {path} ({type(err).__name__}): corrupted or not an .npz; {_HUMAN_HELP}"
        ) from None


def _read_pt(path: Path, key: str) -> dict:
    """The dict of the published .pt, unpickled with only numpy arrays allowed."""
    try:
        with torch.serialization.safe_globals([(obj, name) for name, obj in ARRAY_GLOBALS.items()]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(
            f"cannot read {path} ({type(err).__name__}): corrupted or holds more than label arrays; "
            f"{_HUMAN_HELP}, or use the .npz"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a {type(data).__name__}, not a dict of label arrays; {_HUMAN_HELP}")
    _require_keys(path, key, data.keys())
    return data


def _require_keys(path: Path, key: str, present) -> None:
    missing = [name for name in (key, "clean_label") if name not in present]
    if missing:
        raise UserError(
            f"{path} has no {', '.join(missing)}; it has {', '.join(sorted(present))}; {_HUMAN_HELP}"
        )


def _check_column(path: Path, name: str, values, classes: int) -> np.ndarray:
    """``values`` as int64 (50000,) with labels in [0, classes), else ``UserError``."""
    array = np.asarray(values)
    if array.shape != (_HUMAN_SIZE,) or not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"{path}: {name} should be {_HUMAN_SIZE} integer labels, got shape {array.shape} "
                        f"of {array.dtype}; {_HUMAN_HELP}")
    if array.min() < 0 or array.max() >= classes:
        raise UserError(f"{path}: {name} has labels outside [0, {classes}); {_HUMAN_HELP}")
    return array.astype(np.int64)

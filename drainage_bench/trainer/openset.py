"""Open-set trials: which classes are known, and the data of such a trial.

A trial is open-set when its TrialConfig's ``openset`` field names a split (so the split is part
of its trial_id). The forms:

- ``standard:N``: split N (0..4) of the open-set literature's 6 known / 4 unknown protocol for
  MNIST, SVHN and CIFAR-10 (``openset_splits.STANDARD_SPLITS``, kept as published);
- ``random:K:SEED``: K unknown classes drawn without replacement with numpy's
  ``default_rng(SEED)`` (the drainage paper reports 5 random removals of 4 classes);
- ``known:0,1,2,3,4,5``: the known classes, listed (no repeats, each in 0..C-1, at least 2, not all);
- ``vs:DATASET``: every class of the training set is known; the unknowns are the test set of
  another dataset with the same image shape (``vs:fashion_mnist`` for MNIST).

Training uses the known classes only, relabelled 0..K-1 in increasing order of their original
ids (label noise then applies to that training set). With ``openset_unknown_train = "relabel"``
the training samples of the unknown classes are kept instead, each given a known label drawn
uniformly at random (seeded by the trial's seed): the drainage paper's class-ambiguity
demonstration. The closed-set test set is the known classes' test samples (relabelled); the
open-set test set is those plus the unknown test samples. Normalisation keeps the statistics of
the whole training set of the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from drainage_bench.errors import UserError, did_you_mean
from drainage_bench.trainer.openset_splits import STANDARD_SPLIT_ALIASES, STANDARD_SPLITS

FORMS = "valid: standard:N, random:K:SEED, known:0,1,2,..., vs:DATASET (or empty: a closed-set trial)"
UNKNOWN_TRAIN = ("drop", "relabel")  # what happens to the training samples of the unknown classes
RELABEL_SEED_OFFSET = 7_919  # the relabelling's generator is seeded (seed, this): not the noise's stream


@dataclass(frozen=True)
class OpenSetSplit:
    """Known classes (original ids, sorted: new label i is ``known[i]``) and where unknowns come from."""

    spec: str
    known: tuple[int, ...]
    unknown: tuple[int, ...]        # held-out classes of the same dataset (empty for vs:)
    other: str | None = None        # vs: the dataset whose test set is the unknowns


def _number(text: str) -> bool:
    """A plain decimal integer as the spec writes it once: ASCII digits, no leading zero
    (``standard:01`` would be another trial_id for ``standard:1``; ``'²'.isdigit()`` is true)."""
    return text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0"))


def parse_openset(spec: str, dataset: str) -> OpenSetSplit:
    """The split named by ``spec`` for ``dataset``; UserError naming the problem otherwise."""
    from drainage_bench.trainer.data import DATASETS

    info = DATASETS[dataset]
    classes = info.num_classes
    kind, _, rest = spec.partition(":")

    def bad(what: str) -> UserError:
        return UserError(f"openset={spec!r} is invalid: {what}")

    if kind == "standard":
        source = STANDARD_SPLIT_ALIASES.get(dataset, dataset)
        if source not in STANDARD_SPLITS:
            raise bad(f"there are no standard splits for {dataset}; they exist for "
                      + ", ".join(sorted(STANDARD_SPLITS)) + "; use random:K:SEED or known:... instead")
        splits = STANDARD_SPLITS[source]
        if not _number(rest) or int(rest) >= len(splits):
            raise bad(f"standard:N takes a split number N in 0..{len(splits) - 1}")
        return _split(spec, splits[int(rest)], classes)
    if kind == "random":
        k, _, seed = rest.partition(":")
        if not (_number(k) and _number(seed)):
            raise bad("write random:K:SEED with integers K (unknown classes) and SEED, e.g. random:4:0")
        if not 1 <= int(k) <= classes - 2:
            raise bad(f"K={k} unknown classes of {classes}; valid: 1..{classes - 2} (at least 2 stay known)")
        unknown = np.random.default_rng(int(seed)).choice(classes, size=int(k), replace=False)
        return _split(spec, sorted(set(range(classes)) - {int(u) for u in unknown}), classes)
    if kind == "known":
        items = [x.strip() for x in rest.split(",")]
        if not items or not all(_number(x) for x in items):
            raise bad("write known:A,B,... with class ids, e.g. known:0,1,2,3,4,5")
        known = [int(x) for x in items]
        repeated = sorted({c for c in known if known.count(c) > 1})
        if repeated:
            raise bad(f"class {repeated[0]} is listed twice; list each known class once")
        outside = [c for c in known if c >= classes]
        if outside:
            raise bad(f"class {outside[0]} is out of range; {dataset} has classes 0..{classes - 1}")
        if not 2 <= len(known) < classes:
            raise bad(f"{len(known)} known classes of {classes}; valid: 2..{classes - 1} (at least one unknown)")
        return _split(spec, known, classes)
    if kind == "vs":
        if rest not in DATASETS:
            raise bad("unknown dataset " + repr(rest) + "; " + did_you_mean(rest, DATASETS))
        other = DATASETS[rest]
        if rest == dataset:
            raise bad("the unknowns must come from another dataset than the training set")
        shape, other_shape = (info.in_channels, info.image_size), (other.in_channels, other.image_size)
        if shape != other_shape:
            raise bad(f"{rest} images are {_shape(other_shape)}, {dataset} images {_shape(shape)}; "
                      "cross-dataset unknowns need the same image shape (e.g. mnist vs fashion_mnist)")
        return OpenSetSplit(spec, tuple(range(classes)), (), rest)
    raise bad(FORMS)


def _shape(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}x{shape[1]}"


def _split(spec: str, known, classes: int) -> OpenSetSplit:
    known = tuple(sorted(int(c) for c in known))
    return OpenSetSplit(spec, known, tuple(c for c in range(classes) if c not in known))


def validate_openset(spec: str, dataset: str, unknown_train: str) -> None:
    """Check the two open-set fields of a TrialConfig (an empty ``spec`` is a closed-set trial)."""
    if unknown_train not in UNKNOWN_TRAIN:
        raise UserError(f"openset_unknown_train={unknown_train!r} is invalid: " + did_you_mean(unknown_train, UNKNOWN_TRAIN))
    if not spec:
        if unknown_train != "drop":
            raise UserError("openset_unknown_train='relabel' needs an open-set split (openset=standard:N, ...)")
        return
    split = parse_openset(spec, dataset)
    if split.other is not None and unknown_train == "relabel":
        raise UserError(f"openset={spec!r}: relabel needs unknown classes of the training set, not another dataset")


# ---------------------------------------------------------------------------------------------
# Applying a split to a loaded dataset


@dataclass
class OpenSetTest:
    """The open-set test set: the known classes' test samples, then the unknown ones."""

    images: torch.Tensor       # uint8 (N, C, H, W)
    is_unknown: torch.Tensor   # bool (N,)
    label: torch.Tensor        # int64: the original class id (in its own dataset)
    known_label: torch.Tensor  # int64: 0..K-1 for known samples, -1 for unknown ones


@dataclass
class OpenSetData:
    data: object                  # TensorData of the known classes: train, test relabelled, K classes
    test: OpenSetTest
    train_relabelled: torch.Tensor  # bool per training sample: an unknown-class sample given a known label


def apply_openset(data, config, root: Path) -> OpenSetData:
    """The open-set version of ``data`` (a TensorData) for ``config.openset``."""
    from drainage_bench.trainer.data import TensorData, load_dataset

    if not isinstance(data, TensorData):
        raise UserError(f"openset works on in-memory datasets only, not {config.dataset}")
    split = parse_openset(config.openset, config.dataset)
    relabel = torch.full((data.num_classes,), -1, dtype=torch.int64)
    relabel[list(split.known)] = torch.arange(len(split.known))
    train_known = relabel[data.train_labels]
    test_known = relabel[data.test_labels]
    keep_test = test_known >= 0
    if config.openset_unknown_train == "relabel":
        rng = np.random.default_rng([config.seed, RELABEL_SEED_OFFSET])
        relabelled = train_known < 0
        random_labels = torch.from_numpy(rng.integers(0, len(split.known), size=int(relabelled.sum())))
        train_labels = train_known.clone()
        train_labels[relabelled] = random_labels
        train_images = data.train_images
    else:
        keep = train_known >= 0
        relabelled = torch.zeros(int(keep.sum()), dtype=torch.bool)
        train_labels, train_images = train_known[keep], data.train_images[keep]
    known_data = replace(data, train_images=train_images, train_labels=train_labels,
                         test_images=data.test_images[keep_test], test_labels=test_known[keep_test],
                         num_classes=len(split.known),
                         class_names=tuple(data.class_names[c] for c in split.known))
    if split.other is None:
        unknown_images, unknown_labels = data.test_images[~keep_test], data.test_labels[~keep_test]
    else:
        other = load_dataset(split.other, root)
        if other.test_images.shape[1:] != data.test_images.shape[1:]:
            raise UserError(f"openset={config.openset!r}: {split.other} test images have shape "
                            f"{tuple(other.test_images.shape[1:])}, {config.dataset} {tuple(data.test_images.shape[1:])}")
        unknown_images, unknown_labels = other.test_images, other.test_labels
    n_known, n_unknown = int(keep_test.sum()), len(unknown_labels)
    test = OpenSetTest(
        images=torch.cat([known_data.test_images, unknown_images]),
        is_unknown=torch.cat([torch.zeros(n_known, dtype=torch.bool), torch.ones(n_unknown, dtype=torch.bool)]),
        label=torch.cat([data.test_labels[keep_test], unknown_labels]),
        known_label=torch.cat([known_data.test_labels, torch.full((n_unknown,), -1, dtype=torch.int64)]))
    return OpenSetData(known_data, test, relabelled)


@torch.no_grad()
def openset_scores(forward, test: OpenSetTest, num_classes: int, batch_size: int, drainage: bool) -> dict[str, np.ndarray]:
    """Per open-set test sample: labels, the prediction over the known classes, and the scores,
    each oriented so that higher means "more unknown":

    - ``score_msp = -max_k softmax(z_1..z_K)_k``: the maximum softmax probability over the K
      class logits only (the drainage column left out, so CE and drainage models compare alike);
    - ``score_maxlogit = -max_k z_k`` over the K class logits;
    - ``score_pd = softmax(z_1..z_K, z_d)_d``: the drainage probability (drainage models; NaN else);
    - ``drained``: the open-drainage decision, z_d > max_k z_k (False without a drainage node).

    The softmax scores are computed in float64: in float32 the MSP of a sample whose top logit
    leads by about 17 or more is exactly 1, so confident samples tie and the rank metrics drift
    towards chance (float64 separates margins up to about 36).
    """
    images = test.images
    device = next(iter(forward.model.parameters())).device
    logits = []
    for start in range(0, len(images), batch_size):
        logits.append(forward(images[start:start + batch_size].to(device)).cpu())
    z = torch.cat(logits) if logits else torch.empty(0, num_classes + int(drainage))
    classes = z[:, :num_classes]
    top, pred = classes.max(1)
    nan = torch.full_like(top, float("nan"))
    return {
        "is_unknown": test.is_unknown.numpy(),
        "label": test.label.numpy(),
        "known_label": test.known_label.numpy(),
        "pred": pred.numpy(),
        "score_msp": (-classes.double().softmax(1).max(1).values).numpy(),
        "score_maxlogit": (-top).numpy(),
        "score_pd": (z.double().softmax(1)[:, -1] if drainage else nan.double()).numpy(),
        "drained": (z[:, num_classes] > top if drainage else torch.zeros_like(top, dtype=torch.bool)).numpy(),
    }

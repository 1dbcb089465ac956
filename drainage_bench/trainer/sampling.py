"""The order of the training samples in an epoch: all of them, or a class-balanced subsample.

``balanced_subsample = n > 0`` (a TrialConfig field) is the class-balanced subsample common on
Clothing1M (e.g. DivideMix: 64,000 noisy images a pass, equal per class): every epoch draws,
anew, n samples of each class by its training label (the noisy label: the clean one is unknown),
without replacement within the class, and shuffles the n * C of them (C: the classes that have
training samples). Every such class needs at least n. All draws come from the trial's data-order
generator.
"""
from __future__ import annotations

from typing import Callable

import torch

from drainage_bench.errors import UserError


def balanced_order(labels: torch.Tensor, per_class: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``per_class`` positions of each class present in ``labels`` (CPU int64), in a random order.

    A random permutation, stably sorted by label, lists each class's positions in random order;
    the first ``per_class`` of each class are kept, then shuffled together.
    """
    perm = torch.randperm(len(labels), generator=generator)
    by_class = perm[torch.sort(labels[perm], stable=True).indices]
    counts = torch.bincount(labels, minlength=num_classes)
    starts = (counts.cumsum(0) - counts)[counts > 0]
    chosen = by_class[(starts[:, None] + torch.arange(per_class)).flatten()]
    return chosen[torch.randperm(len(chosen), generator=generator)]


def epoch_orders(labels: torch.Tensor, num_classes: int, per_class: int,
                 generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """A function giving each epoch's order: a permutation of all samples, or (``per_class`` > 0)
    a fresh balanced subsample. Checks, before training, that every class has enough samples."""
    labels = labels.cpu()
    if per_class == 0:
        return lambda: torch.randperm(len(labels), generator=generator)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts.masked_fill(counts == 0, len(labels) + 1)  # classes without samples are skipped
    short = int(present.argmin())
    if counts[short] < per_class:
        raise UserError(f"balanced_subsample={per_class} is more than the {int(counts[short])} training samples "
                        f"labelled {short}; valid: at most {int(counts[short])} per class, or 0 for all samples")
    return lambda: balanced_order(labels, per_class, num_classes, generator)

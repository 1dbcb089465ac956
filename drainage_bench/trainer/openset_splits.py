"""The standard open-set class splits, as published (plain data, no code).

Source: the ``splits_2020`` dict of ``split.py`` in the code of ARPL (Chen et al., "Adversarial
Reciprocal Points Learning for Open Set Recognition", TPAMI 2021; github.com/iCGY96/ARPL), the
same lists as ``data/open_set_splits/osr_splits.py`` of Vaze et al. ("Open-Set Recognition: a Good
Closed-Set Classifier is All You Need", ICLR 2022; github.com/sgvaze/osr_closed_set_all_you_need),
the 6 known / 4 unknown protocol of Neal et al. (ECCV 2018). Each list names the 6 KNOWN classes
(original label ids) of one of the 5 splits; the other 4 classes are unknown.

The lists are kept exactly as published, in their published order. Note that CIFAR-10's splits 0
and 1 are the same set of known classes ({0, 1, 4, 6, 7, 9}, listed in another order): the
published protocol averages over 4 distinct splits, one of them twice. ``standard:N`` is list N,
as Vaze et al. index it (``split_idx``); ARPL's ``osr.py`` runs its item i on list 4 - i. The known
classes are relabelled 0..K-1 in class-id order, not in list order (a permutation of the label
ids, which changes nothing for the open-set trials' noise types).
"""

STANDARD_SPLITS: dict[str, tuple[tuple[int, ...], ...]] = {
    "mnist": (
        (2, 4, 5, 9, 8, 3),
        (3, 2, 6, 9, 4, 0),
        (5, 8, 3, 2, 4, 6),
        (3, 7, 8, 4, 0, 5),
        (6, 3, 4, 9, 8, 2),
    ),
    "svhn": (
        (5, 3, 7, 2, 8, 6),
        (3, 8, 7, 6, 2, 5),
        (8, 9, 4, 7, 2, 1),
        (3, 8, 2, 5, 0, 6),
        (4, 9, 2, 7, 1, 0),
    ),
    "cifar10": (
        (0, 6, 4, 9, 1, 7),
        (7, 6, 4, 9, 0, 1),  # the same known classes as split 0 (as published)
        (1, 5, 7, 3, 9, 4),
        (8, 6, 1, 9, 0, 7),
        (2, 4, 1, 7, 9, 6),
    ),
}
# Datasets that share another's classes use its splits (CIFAR-10N has CIFAR-10's images).
STANDARD_SPLIT_ALIASES = {"cifar10n": "cifar10"}

"""TrialConfig identity: one experiment, one trial_id; different experiments, different ids."""
from __future__ import annotations

import pytest

from drainage_bench.config import build_config
from drainage_bench.errors import UserError


def test_the_default_human_key_is_spelled_out() -> None:
    implicit = build_config("cifar10n", "ce", {"noise": "human"})
    explicit = build_config("cifar10n", "ce", {"noise": "human", "noise_key": "worse_label"})
    assert implicit.noise_key == "worse_label" and implicit.trial_id == explicit.trial_id
    assert build_config("cifar100n", "ce", {"noise": "human"}).noise_key == "noisy_label"
    assert implicit.trial_id != build_config("cifar10n", "ce", {"noise": "human", "noise_key": "aggre_label"}).trial_id


def test_drainage_beta_defaults_to_one_over_alpha() -> None:
    derived = build_config("mnist", "drainage", {"alpha": 4.0})
    assert derived.params == {"alpha": 4.0, "beta": 0.25}
    assert derived.trial_id == build_config("mnist", "drainage", {"alpha": 4.0, "beta": 0.25}).trial_id
    assert build_config("cifar100", "drainage").params == {"alpha": 0.1, "beta": 10.0}


def test_numbers_hash_by_value_and_unused_settings_do_not_count() -> None:
    base = build_config("digits", "ce")
    assert base.replace(lr=1).trial_id == base.replace(lr=1.0).trial_id
    assert base.replace(epochs=3.0).epochs == 3 and isinstance(base.replace(epochs=3.0).epochs, int)
    assert base.replace(step_size=7).trial_id == base.trial_id           # cosine schedule
    assert base.replace(val_labels="noisy").trial_id == base.trial_id    # no split
    assert base.replace(schedule="step", step_size=7).trial_id != base.replace(schedule="step", step_size=8).trial_id
    split = base.replace(val_fraction=0.2)
    assert split.replace(val_labels="noisy").trial_id != split.trial_id


@pytest.mark.parametrize("overrides, field", [
    ({"seed": True}, "seed"),
    ({"epochs": 2.5}, "epochs"),
    ({"noise": "none", "noise_rate": 0.3}, "noise_rate"),
    ({"noise": "sym", "noise_rate": 0.2, "noise_key": "worse_label"}, "label key"),
    ({"lr": float("nan")}, "lr"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"drainage_logit": 1.0}, "drainage_logit"),  # CE has no drainage node
])
def test_invalid_fields_are_named(overrides: dict, field: str) -> None:
    with pytest.raises(UserError, match=field):
        build_config("digits", "ce", overrides)

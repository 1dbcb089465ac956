"""Speed options of a trial: compile (not part of the identity; eager, in one line, where it
cannot work) and amp (bf16 autocast on the CPU as an opt-in, hashed apart from fp32)."""
from __future__ import annotations

import math

import pytest

from drainage_bench.config import build_config
from drainage_bench.trainer import compiled as compiled_mod
from drainage_bench.trainer.loop import cpu_has_bf16, run_trial

DIGITS = {"epochs": 1, "noise": "asym", "noise_rate": 0.2, "device": "cpu"}


def test_amp_and_compile_keep_old_trial_ids_and_separate_different_computations() -> None:
    default = build_config("digits", "ce")
    # The trial_id version 0.1 gave this config (amp defaulted to true then, meaning bf16 on CUDA).
    assert default.trial_id == "ce-clean-s0-73113bba8e"
    assert build_config("digits", "ce", {"compile": True}).trial_id == default.trial_id  # rounding only
    # on where it pays (MNIST, and Fashion-MNIST extending it), off for digits, which extends MNIST too
    assert [build_config(d, "ce").compile for d in ("digits", "mnist", "fashion_mnist", "cifar10")] == \
        [False, True, True, False]
    bf16 = build_config("digits", "ce", {"amp": True}).trial_id  # bf16 on the CPU too: another computation
    fp32 = build_config("digits", "ce", {"amp": False}).trial_id
    assert len({default.trial_id, bf16, fp32}) == 3


def test_compile_falls_back_to_eager_in_one_line_without_a_c_compiler(monkeypatch, capsys) -> None:
    eager = run_trial(build_config("digits", "ce", DIGITS))
    monkeypatch.setattr(compiled_mod.shutil, "which", lambda name: None)
    config = build_config("digits", "ce", {**DIGITS, "compile": True})
    result = run_trial(config)
    lines = [line for line in capsys.readouterr().err.splitlines() if "compile" in line or "C compiler" in line]
    assert lines == [f"trial {config.trial_id}: no C compiler found for torch.compile's CPU backend "
                     "(install gcc); training eagerly"]
    record = result.record()
    assert record["compile_status"].startswith("eager: no C compiler") and record["compile_seconds"] == 0.0
    assert result.summary["final_test_acc"] == eager.summary["final_test_acc"]  # the eager computation
    assert result.epochs[0]["train_loss"] == eager.epochs[0]["train_loss"]
    assert eager.record()["compile_status"] == "off"


def test_a_compiler_error_trains_eagerly_and_says_why(monkeypatch, capsys) -> None:
    def broken(module):
        def call(*args):
            raise RuntimeError("unsupported op: aten::frobnicate\nlong traceback")
        return call

    monkeypatch.setattr(compiled_mod.torch, "compile", broken)
    eager = run_trial(build_config("digits", "drainage", DIGITS))
    result = run_trial(build_config("digits", "drainage", {**DIGITS, "compile": True}))
    assert result.status == "ok"
    status = result.record()["compile_status"]
    assert status == "eager: torch.compile of the model failed (RuntimeError: unsupported op: aten::frobnicate)"
    assert capsys.readouterr().err.count("training eagerly") == 1  # one line, not one per batch
    assert result.summary["final_test_acc"] == eager.summary["final_test_acc"]


def test_amp_true_on_the_cpu_is_bf16_where_the_cpu_has_it_and_repeats() -> None:
    fp32 = run_trial(build_config("digits", "drainage", DIGITS))
    bf16 = run_trial(build_config("digits", "drainage", {**DIGITS, "amp": True}))
    assert fp32.record()["precision"] == "fp32"  # the CPU default stays fp32
    if not cpu_has_bf16():
        assert bf16.record()["precision"] == "fp32"
        return
    assert bf16.record()["precision"] == "bf16"
    again = run_trial(build_config("digits", "drainage", {**DIGITS, "amp": True}))
    assert again.epochs[0]["train_loss"] == bf16.epochs[0]["train_loss"]  # seeded: repeats exactly
    # bf16 rounds the activations to 8 bits of mantissa: the loss moves by more than fp32 rounding.
    assert not math.isclose(bf16.epochs[0]["train_loss"], fp32.epochs[0]["train_loss"], rel_tol=1e-6)
    assert abs(bf16.summary["final_test_acc"] - fp32.summary["final_test_acc"]) < 0.1  # and still trains


@pytest.mark.parametrize("value", ["yes", 1])
def test_bad_compile_or_amp_values_name_the_field(value) -> None:
    from drainage_bench.errors import UserError

    with pytest.raises(UserError, match="compile="):
        build_config("digits", "ce", {"compile": value})
    with pytest.raises(UserError, match="amp="):
        build_config("digits", "ce", {"amp": value})

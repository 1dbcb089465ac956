"""`compile=true`: torch.compile of the model and the loss for the training steps.

The training forward pass (model, then loss) runs compiled; evaluation runs the same parameters
eagerly (it sees other batch sizes and eval mode, each a recompilation, for a small share of the
time). Compilation happens at the first training batch (and once more for the smaller last batch
of an epoch); its time is read from torch's own compilation metrics and recorded per trial as
``compile_seconds``. Compiled kernels round differently from eager ones: numbers agree to float
error per step (measured in `benchmarks/compile_benefit.py`), so `compile` is not part of the
trial_id, like the device.

Where compilation cannot work (no C compiler for the CPU backend, an op the compiler rejects),
the trial prints one line saying so and trains eagerly; the record's ``compile_status`` says
which happened: ``compiled``, ``eager: <why>`` or ``off``.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class CompileState:
    """What compile did in one trial (recorded as compile_status, compile_seconds)."""

    status: str = "off"
    _since_us: int = field(default=0, repr=False)

    def seconds(self) -> float:
        """Compilation time since the trial started, from torch's compilation metrics."""
        if self.status == "off":
            return 0.0
        from torch._dynamo.utils import get_compilation_metrics

        metrics = [m for m in get_compilation_metrics() if (m.start_time_us or 0) >= self._since_us]
        return sum((m.duration_us or 0) for m in metrics) / 1e6

    def record(self) -> dict:
        return {"compile_status": self.status, "compile_seconds": self.seconds()}


def _why_not(device: torch.device) -> str | None:
    """A reason compilation cannot work here, found before trying (None: try it)."""
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("cc", "gcc", "g++", "clang", "clang++")):
        return "no C compiler found for torch.compile's CPU backend (install gcc)"
    return None


class _EagerOnFailure(nn.Module):
    """Calls the compiled module; if compiling fails, says so once and calls the eager one."""

    def __init__(self, compiled, eager: nn.Module, state: CompileState, what: str, trial_id: str) -> None:
        super().__init__()
        self.compiled, self.eager, self.state, self.what, self.trial_id = compiled, eager, state, what, trial_id
        self.failed = False

    def forward(self, *args):
        if not self.failed:
            try:
                return self.compiled(*args)
            except Exception as err:  # noqa: BLE001 - any compiler failure: train eagerly instead
                self.failed = True
                reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
                _eager(self.state, f"torch.compile of the {self.what} failed ({type(err).__name__}: {reason})",
                       self.trial_id)
        return self.eager(*args)


def _eager(state: CompileState, why: str, trial_id: str) -> None:
    if state.status.startswith("eager"):  # the loss after the model: the first reason is the one
        return
    state.status = f"eager: {why}"
    print(f"trial {trial_id}: {why}; training eagerly", file=sys.stderr, flush=True)


def compile_for_training(config, model: nn.Module, loss_fn: nn.Module, device: torch.device):
    """(the training model, the training loss, CompileState): compiled when `config.compile`."""
    state = CompileState()
    if not config.compile:
        return model, loss_fn, state
    why = _why_not(device)
    if why is not None:
        _eager(state, why, config.trial_id)
        return model, loss_fn, state
    state.status, state._since_us = "compiled", time.time_ns() // 1000
    train_model = _EagerOnFailure(torch.compile(model), model, state, "model", config.trial_id)
    train_loss = _EagerOnFailure(torch.compile(loss_fn), loss_fn, state, "loss", config.trial_id)
    return train_model, train_loss, state

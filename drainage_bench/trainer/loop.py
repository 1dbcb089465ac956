"""The shared trainer: `run_trial(config, on_epoch)` trains one TrialConfig and returns its result.

It knows nothing of Ray or Optuna. `on_epoch(metrics)` is called after every epoch; the Ray
adapter reports the metrics to Tune, the Optuna adapter reports them to its trial and raises to
prune. An exception raised by `on_epoch` passes through unchanged; any other failure (a NaN loss,
out of memory, a bug) ends the trial with ``status="failed"`` and the error, so a sweep goes on.

Data live on the device as uint8 tensors; a batch is an index slice, converted, augmented and
normalised there (airbench style). Large image-folder datasets stream through a DataLoader.
On CUDA the forward pass runs under bf16 autocast with channels_last; the CPU path is fully
deterministic: the same config gives the same numbers.
"""
from __future__ import annotations

import math
import platform
import random
import socket
import sys
import time
from datetime import datetime
import traceback
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

import drainage_bench
from drainage_bench.config import TrialConfig
from drainage_bench.errors import UserError
from drainage_bench.metrics import calibration
from drainage_bench.trainer import corruptions as corruption_sets
from drainage_bench.trainer import mollify
from drainage_bench.trainer.augment import make_augment
from drainage_bench.trainer.compiled import compile_for_training
from drainage_bench.trainer.data import DATASETS, StreamData, TensorData, load_dataset, resolve_data_root, stratified_split
from drainage_bench.trainer.losses import LOSSES, display_name, make_loss
from drainage_bench.trainer.models import make_model
from drainage_bench.trainer.noise import NoisyLabels, make_noisy_labels
from drainage_bench.trainer.pretrained import PretrainedWeights, load_weights
from drainage_bench.trainer.provenance import provenance, use_deterministic
from drainage_bench.trainer.sampling import epoch_orders
from drainage_bench.trainer.stream import StreamBatches
from drainage_bench.trainer.openset import OpenSetTest, apply_openset, openset_scores

MAX_EVAL_BATCH = 1024
OnEpoch = Callable[[dict[str, Any]], None]


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrialResult:
    """The outcome of one trial: summary metrics, per-epoch metrics, per-sample drainage data."""

    config: TrialConfig
    status: str
    epochs: list[dict[str, Any]]
    realized_noise_rate: float
    wall_seconds: float
    error: str | None = None
    started_at: float = field(default_factory=time.time)  # unix time
    broken_cuda: bool = False  # a CUDA error left this process's GPU context unusable
    device: str = "cpu"
    samples: dict[str, np.ndarray] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    noise: dict[str, Any] | None = None  # the labels trained on (NoisyLabels.record), stored once per hash
    conditions: dict[str, Any] = field(default_factory=dict)  # provenance.provenance(): threads, builds, GPU
    openset: dict[str, np.ndarray] | None = None  # open-set trials: per test sample scores (openset.py)
    extra: dict[str, Any] = field(default_factory=dict)  # how it ran: precision, compile_status, compile_seconds
    corruptions: list[dict[str, Any]] | None = None  # one row per (corruption, severity)

    def record(self) -> dict[str, Any]:
        """One flat row for the results store: the config, the metrics, provenance."""
        return {
            "trial_id": self.config.trial_id,
            **self.config.to_dict(),
            "loss_display": self.config.label or display_name(self.config.loss),
            "status": self.status,
            "error": self.error,
            **self.summary,
            "realized_noise_rate": self.realized_noise_rate,
            "noise_hash": self.noise["hash"] if self.noise else None,
            "epochs_run": len(self.epochs),
            "wall_seconds": self.wall_seconds,
            "device_used": self.device,
            **self.extra,
            "started_at": _timestamp(self.started_at),
            "finished_at": _timestamp(time.time()),
            "host": socket.gethostname(),
            "version": drainage_bench.__version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            **self.conditions,
        }


def _timestamp(unix: float) -> str:
    """Local time with milliseconds and the UTC offset, e.g. 2026-11-23T10:04:05.123+01:00."""
    return datetime.fromtimestamp(unix).astimezone().isoformat(timespec="milliseconds")


def summarize(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """Final metrics, the test accuracy at the best *validation* epoch, and two test-set views that
    papers report: the best test epoch (``best_test_acc``, ``best_test_epoch``: selected on the
    test set, so optimistic) and the mean test accuracy over the evaluated epochs among the last
    10 (``last10_test_acc``)."""
    out: dict[str, Any] = {}
    if not epochs:
        return out
    last = epochs[-1]
    for key in ("test_acc", "val_acc", "train_acc_noisy", "train_acc_clean", "memorized",
                "drainage_share_clean", "drainage_share_noisy", "train_loss",
                "test_nll", "test_ece", "val_nll", "val_ece"):
        out[f"final_{key}"] = last.get(key, math.nan)
    if "imagenet_acc" in last:  # WebVision's second test set (the ILSVRC2012 validation images)
        out["final_imagenet_acc"] = last["imagenet_acc"]
    evaluated = [e for e in epochs if not math.isnan(e.get("val_acc", math.nan))]
    if evaluated:
        best = max(evaluated, key=lambda e: e["val_acc"])  # first epoch of the best value
        out.update(best_val_acc=best["val_acc"], best_val_epoch=best["epoch"], test_acc_at_best_val=best["test_acc"],
                   test_nll_at_best_val=best.get("test_nll", math.nan), test_ece_at_best_val=best.get("test_ece", math.nan))
    else:
        out.update(best_val_acc=math.nan, best_val_epoch=-1, test_acc_at_best_val=math.nan,
                   test_nll_at_best_val=math.nan, test_ece_at_best_val=math.nan)
    tested = [e for e in epochs if not math.isnan(e.get("test_acc", math.nan))]
    if tested:
        best = max(tested, key=lambda e: e["test_acc"])  # first epoch of the best value
        last10 = [e["test_acc"] for e in tested if e["epoch"] > last["epoch"] - 10]
        out.update(best_test_acc=best["test_acc"], best_test_epoch=best["epoch"],
                   last10_test_acc=sum(last10) / len(last10) if last10 else math.nan)
    else:
        out.update(best_test_acc=math.nan, best_test_epoch=-1, last10_test_acc=math.nan)
    return out


def eval_batch_size(train_batch: int) -> int:
    """Evaluation batches: 4x the training batch, at most MAX_EVAL_BATCH (224 px ResNet-50 at
    batch 64 evaluates 256 images at a time, not 1024, which matters on a shared GPU)."""
    return max(train_batch, min(MAX_EVAL_BATCH, 4 * train_batch))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was asked for but no CUDA GPU is visible; use --set device=cpu or auto")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


# ---------------------------------------------------------------------------------------------
# Batches: tensors on the device (index slices) or a stream from image files


class TensorBatches:
    """Images already in memory (on the device): a batch is an index slice."""

    def __init__(self, images: torch.Tensor, device: torch.device) -> None:
        self.images = images.to(device, non_blocking=True)

    def __call__(self, order: torch.Tensor, batch_size: int, train: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in order.to(self.images.device).split(batch_size):  # one copy per epoch
            yield idx, self.images[idx]


@dataclass
class Prepared:
    """Everything the epoch loop needs, on the device."""

    train: Callable[..., Iterator[tuple[torch.Tensor, torch.Tensor]]]
    n_train: int
    train_labels: torch.Tensor       # the labels trained on (noisy)
    train_clean: torch.Tensor
    train_is_noisy: torch.Tensor
    evals: dict[str, tuple[Callable[..., Iterator], torch.Tensor, int]]  # name -> (batches, labels, n)
    noisy: NoisyLabels
    num_classes: int
    mean: torch.Tensor
    std: torch.Tensor
    in_channels: int
    image_size: int
    noise_record: dict[str, Any] | None = None  # NoisyLabels.record of the whole training set
    pretrained: PretrainedWeights | None = None  # starting weights (the `pretrained` field)
    openset: OpenSetTest | None = None         # open-set trials: known + unknown test samples
    train_relabelled: torch.Tensor | None = None  # open-set "relabel": unknown-class training samples
    test_set: tuple[torch.Tensor, torch.Tensor] | None = None  # (uint8 images, labels) in memory, CPU:
    # the closed-set test set as trained for (open-set: the known classes), for corrupted copies


def prepare(config: TrialConfig, device: torch.device, evaluate_test: bool = True) -> Prepared:
    """Load the data, apply the noise, split 80/20 if asked, and move it to the device.

    Without `evaluate_test` the test split is left out of the evaluations (the Optuna search).
    """
    root = resolve_data_root(config.data_root)
    data = load_dataset(config.dataset, root)
    info = DATASETS[config.dataset]
    openset = apply_openset(data, config, root) if config.openset else None
    if openset is not None:  # the known classes only (relabelled 0..K-1); noise applies to them
        data = openset.data
    noisy = make_noisy_labels(
        data.train_labels, config.noise, config.noise_rate, data.num_classes, dataset=config.dataset,
        seed=config.seed, images=data.train_images if isinstance(data, TensorData) else None,
        key=config.noise_key, data_root=root, path=config.noise_file)
    split = config.val_fraction > 0
    if split:
        # Noise first, on the whole training set; then a stratified split (by the observed labels)
        # with its own fixed seed. The validation part carries clean labels unless asked otherwise.
        train_idx, val_idx = stratified_split(noisy.labels, config.val_fraction, config.split_seed)
    else:
        train_idx = np.arange(len(data.train_labels))

    def source(part: str, indices: np.ndarray | None = None, training: bool = False):
        """Batches over the "train" or "test" images, restricted to `indices` (None: all of them)."""
        if isinstance(data, StreamData):
            dataset = getattr(data, part)
            return StreamBatches(dataset, np.arange(len(dataset)) if indices is None else indices, device,
                                 persistent=training, crop=config.train_crop, seed=config.seed + 3)
        images = getattr(data, f"{part}_images")
        return TensorBatches(images if indices is None else images[torch.as_tensor(indices)], device)

    def on_device(t: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
        return t[torch.as_tensor(indices)].to(device)

    evals = {}
    if evaluate_test:
        evals["test"] = (source("test"), data.test_labels.to(device), len(data.test_labels))
    if split:
        val_labels = noisy.labels if config.val_labels == "noisy" else data.train_labels
        evals["val"] = (source("train", val_idx), on_device(val_labels, val_idx), len(val_idx))
    for name, (files, labels) in getattr(data, "evals", {}).items():  # a streamed dataset's own extra sets
        # its own "val" (Clothing1M's clean validation keys) unless a split gives one; others are test sets
        if (name == "val" and not split) or (name != "val" and evaluate_test):
            evals[name] = (StreamBatches(files, np.arange(len(files)), device, persistent=False),
                           labels.to(device), len(labels))
    shape = (1, -1, 1, 1)
    return Prepared(
        train=source("train", train_idx if split else None, training=True), n_train=len(train_idx),
        train_labels=on_device(noisy.labels, train_idx), train_clean=on_device(data.train_labels, train_idx),
        train_is_noisy=on_device(noisy.is_noisy, train_idx), evals=evals, noisy=noisy,
        num_classes=data.num_classes,
        mean=torch.tensor(data.mean, device=device).view(shape), std=torch.tensor(data.std, device=device).view(shape),
        in_channels=info.in_channels, image_size=info.image_size,
        noise_record=noisy.record(data.train_labels, config.dataset, config.noise, config.noise_rate),
        pretrained=load_weights(config),
        test_set=(data.test_images, data.test_labels) if isinstance(data, TensorData) else None,
        openset=openset.test if openset and evaluate_test else None,  # a search never sees the test set
        train_relabelled=on_device(openset.train_relabelled, train_idx) if openset else None)


# ---------------------------------------------------------------------------------------------
# Optimisation pieces


def make_optimizer(config: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov)


def make_scheduler(config: TrialConfig, optimizer: torch.optim.Optimizer):
    """Stepped once per epoch, as in the reference code."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.step_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def l1_penalty(params: list[torch.Tensor]) -> torch.Tensor:
    """sum_theta |theta| over every parameter (the L1 term delta * ||theta||_1 of the recipes)."""
    return torch.stack(torch._foreach_norm(params, 1)).sum()


# ---------------------------------------------------------------------------------------------
# The loop


class _CallbackError(Exception):
    """Carries an exception raised by on_epoch through run_trial's failure handling."""


@dataclass(frozen=True)
class Precision:
    """How the forward pass uses the device: bf16 autocast and channels_last memory format.

    ``for_device``: on CUDA both, autocast unless ``amp=false``; on a CPU fp32 (deterministic),
    and both only with ``amp=true`` on a CPU that has bf16 instructions (elsewhere the trial says
    so and stays fp32). Tests pass ``Precision(True, True)`` to run the GPU recipe on a CPU.
    """

    autocast: bool
    channels_last: bool

    @classmethod
    def on(cls, device_type: str, autocast: bool) -> "Precision":
        """channels_last goes with the device: always on CUDA, on a CPU only with bf16."""
        return cls(autocast=autocast, channels_last=device_type == "cuda" or autocast)

    @classmethod
    def for_device(cls, device: torch.device, config: TrialConfig) -> "Precision":
        if device.type == "cuda":
            return cls.on("cuda", config.amp is not False)
        bf16 = config.amp is True and cpu_has_bf16()
        if config.amp is True and not bf16:
            print(f"trial {config.trial_id}: amp=true, but this CPU has no bf16 instructions "
                  "(avx512_bf16 / amx_bf16); training in fp32", file=sys.stderr, flush=True)
        return cls.on("cpu", bf16)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux: avx512_bf16 or amx_bf16 in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_trial(config: TrialConfig, on_epoch: OnEpoch | None = None, *, evaluate_test: bool = True,
              precision: Precision | None = None) -> TrialResult:
    """Train one trial. Failures become ``status="failed"``; UserError and on_epoch's errors raise.

    ``evaluate_test=False`` never evaluates on the test split (``test_acc`` stays NaN): the Optuna
    search scores on the validation part only. ``precision`` defaults to ``Precision.for_device``.
    """
    started_at, start = time.time(), time.perf_counter()
    seed_everything(config.seed)
    use_deterministic(config.deterministic)  # before anything touches the GPU
    device = pick_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # recorded as peak_gpu_memory_mb
    prepared = prepare(config, device, evaluate_test)  # UserError (bad data) propagates
    epochs: list[dict[str, Any]] = []
    result = TrialResult(config=config, status="ok", epochs=epochs, device=str(device),
                         realized_noise_rate=prepared.noisy.realized_rate, wall_seconds=0.0,
                         started_at=started_at, noise=prepared.noise_record, conditions=provenance(device))
    precision = precision or Precision.for_device(device, config)
    result.extra["precision"] = "bf16" if precision.autocast else "fp32"
    root = resolve_data_root(config.data_root)
    if config.corruptions in corruption_sets.RELEASED:
        corruption_sets.released_files(config.corruptions, root)  # checked before training (UserError)
    try:
        if prepared.pretrained is not None:
            result.summary["pretrained_sha256"] = prepared.pretrained.sha256
        result.samples, result.openset, forward = _train(config, prepared, device, precision, epochs, on_epoch,
                                                         result.extra)
        if config.corruptions and evaluate_test:
            result.corruptions = _evaluate_corruptions(config, forward, prepared, root, device)
    except _CallbackError as err:
        raise err.__cause__ from None
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - any other failure is recorded, the sweep goes on
        result.status = "failed"
        result.error = f"{type(err).__name__}: {err}"
        if not isinstance(err, Diverged):
            where = traceback.extract_tb(err.__traceback__)[-1]
            result.error += f" (at {Path(where.filename).name}:{where.lineno} in {where.name})"
    finally:
        del prepared
        if device.type == "cuda":  # a reused Ray actor runs the next trial in this process
            try:
                result.extra["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            except Exception:  # noqa: BLE001 - a broken context: _release_cuda_memory says so
                pass
            result.broken_cuda = not _release_cuda_memory()
    result.wall_seconds = time.perf_counter() - start
    result.summary = {**summarize(epochs), **result.summary}
    if result.openset is not None:
        from drainage_bench.metrics.openset import openset_summary

        result.summary.update(openset_summary(result.openset))
    if result.corruptions:
        result.summary.update(corruption_sets.summarize(result.corruptions))
    return result


def _release_cuda_memory() -> bool:
    """Hand cached GPU memory back; False if the CUDA context is broken (a sticky CUDA error)."""
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return True
    except Exception:  # noqa: BLE001 - e.g. an illegal memory access earlier in this process
        return False


class Forward:
    """Images (uint8, on the device) -> fp32 logits, as the trainer feeds the model.

    The images become floats, are augmented (training) and normalised in fp32 *outside* autocast
    (an affine grid for the rotation computed in bf16 would misplace pixels); only the model runs
    under bf16 autocast, and its head in fp32 (see models.ClassifierHead).
    """

    def __init__(self, model: nn.Module, p: Prepared, augment, generator: torch.Generator,
                 precision: Precision, train_model: nn.Module | None = None) -> None:
        self.model, self.p, self.augment, self.generator, self.precision = model, p, augment, generator, precision
        self.train_model = train_model or model  # compiled for training (compile=true), else the model

    def inputs(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        x = images.float().div_(255)
        if train:
            x = self.augment(x, self.generator)
        x = (x - self.p.mean) / self.p.std
        return x.contiguous(memory_format=torch.channels_last) if self.precision.channels_last else x

    def __call__(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        return self.logits(self.inputs(images, train), train)

    def logits(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """Normalised float images -> fp32 logits (through the compiled model when training)."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision.autocast):
            return (self.train_model if train else self.model)(x).float()


def _train(config: TrialConfig, p: Prepared, device: torch.device, precision: Precision, epochs: list,
           on_epoch: OnEpoch | None, extra: dict | None = None):
    loss_cls = LOSSES[config.loss]
    loss_fn = make_loss(config.loss, p.num_classes, **config.params).to(device)
    drainage = loss_cls.extra_outputs == 1
    model = make_model(config.model, p.num_classes, p.in_channels, p.image_size,
                       extra_outputs=loss_cls.extra_outputs, drainage_logit=config.drainage_logit)
    if p.pretrained is not None:
        p.pretrained.apply(model)
    model = model.to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        # few distinct input shapes: pick the fastest kernels once each (not with deterministic kernels)
        torch.backends.cudnn.benchmark = not config.deterministic
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer)
    params = [q for q in model.parameters() if q.requires_grad]
    order_gen = torch.Generator().manual_seed(config.seed)            # data order: CPU, seeded
    aug_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    train_model, train_loss_fn, compiled = compile_for_training(config, model, loss_fn, device)
    forward = Forward(model, p, make_augment(config.augment), aug_gen, precision, train_model)
    mollifier = mollify.from_config(config, p.num_classes)
    # seeds: data order seed, augmentation + 1, mollification + 2, streamed crops + 3 (`prepare`)
    mollify_gen = torch.Generator(device=device).manual_seed(config.seed + 2)
    eval_batch = eval_batch_size(config.batch_size)

    next_order = epoch_orders(p.train_labels, p.num_classes, config.balanced_subsample, order_gen)
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        sums = torch.zeros(6, device=device, dtype=torch.float64)
        order = next_order()  # all samples, or a balanced subsample
        n_seen = len(order)
        n_noisy = int(p.train_is_noisy.sum()) if n_seen == p.n_train else int(p.train_is_noisy[order.to(device)].sum())
        n_clean = n_seen - n_noisy
        for idx, images in p.train(order, config.batch_size, train=True):
            y = p.train_labels[idx]
            if mollifier is None:
                logits = forward(images, train=True)
                loss = objective = train_loss_fn(logits, y)
            else:  # noised / blurred inputs, soft targets (trainer/mollify.py)
                x, soft = mollifier(forward.inputs(images, train=True), y, mollify_gen)
                logits = forward.logits(x, train=True)
                loss = objective = loss_fn.soft_forward(logits, soft)
            if config.l1_delta > 0:
                objective = loss + config.l1_delta * l1_penalty(params)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            with torch.no_grad():
                sums += _batch_stats(logits, y, p.train_clean[idx], p.train_is_noisy[idx], p.num_classes, loss)
        total = sums.tolist()  # waits for the device: the epoch's training steps are done
        train_seconds = time.perf_counter() - t0
        train_loss = total[0] / max(1, math.ceil(n_seen / config.batch_size))
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss is {train_loss} at epoch {epoch} (lr={config.lr:g}); "
                           "lower the learning rate or check the loss parameters")
        scheduler.step()
        metrics = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,  # the loss alone, without the L1 term
            "train_acc_noisy": total[1] / n_seen,
            "train_acc_clean": total[2] / n_seen,
            "memorized": total[5] / n_noisy if n_noisy else math.nan,
            "drainage_share_clean": (total[3] / n_clean if n_clean else math.nan) if drainage else math.nan,
            "drainage_share_noisy": (total[4] / n_noisy if n_noisy else math.nan) if drainage else math.nan,
            "test_acc": math.nan,
            "val_acc": math.nan,
            **{f"{part}_{key}": math.nan for part in ("test", "val") for key in ("nll", "ece")},
        }
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            model.eval()
            for name, (batches, labels, n) in p.evals.items():
                scores = _evaluate(forward, batches(torch.arange(n), eval_batch), labels, p.num_classes)
                metrics.update({f"{name}_{key}": value for key, value in scores.items()})
        metrics["train_seconds"] = train_seconds  # the training steps alone
        metrics["epoch_seconds"] = time.perf_counter() - t0  # with the evaluation
        epochs.append(metrics)
        if extra is not None:
            extra.update(compiled.record())
        if on_epoch is not None:
            try:
                on_epoch(dict(metrics))
            except Exception as err:  # noqa: BLE001 - handed back to the caller unchanged
                raise _CallbackError() from err
    model.eval()
    samples = _drainage_samples(forward, p, eval_batch) if drainage else None
    if samples is not None and p.train_relabelled is not None:
        samples["is_relabelled"] = p.train_relabelled.cpu().numpy()
    scores = None if p.openset is None else openset_scores(forward, p.openset, p.num_classes, eval_batch, drainage)
    return samples, scores, forward


def _batch_stats(logits, y, clean, noisy, num_classes, loss) -> torch.Tensor:
    """[loss, correct vs given label, correct vs clean, drained clean, drained noisy, memorized].

    A sample is drained when its drainage logit beats every class logit (the argmax over all
    outputs, whose ties go to the classes); without a drainage column nothing is.
    """
    top, pred = logits[:, :num_classes].max(1)
    hit = pred == y
    drained = logits[:, num_classes] > top if logits.shape[1] > num_classes else torch.zeros_like(hit)
    return torch.stack([
        loss.detach().double(),
        hit.sum().double(),
        (pred == clean).sum().double(),
        (drained & ~noisy).sum().double(),
        (drained & noisy).sum().double(),
        (hit & noisy).sum().double(),
    ])


@torch.no_grad()
def _evaluate(forward, batches, labels: torch.Tensor | None, num_classes: int) -> dict[str, float]:
    """Accuracy, NLL and ECE (metrics/calibration.py) over `batches` of (idx, images), or of
    (images, labels) when `labels` is None.

    On the closed softmax over the C classes: a drainage model's drainage column is left out and
    the class probabilities renormalised, so the numbers compare with the baselines'. Per image
    only log p(y), the top-label confidence and whether it is right leave the device.
    """
    parts = []
    for first, second in batches:
        images, y = (second, labels[first]) if labels is not None else (first, second)
        log_p = torch.log_softmax(forward(images)[:, :num_classes], dim=1)
        top, pred = log_p.max(1)
        parts.append(torch.stack([log_p.gather(1, y[:, None])[:, 0], top.exp(), (pred == y).float()]))
    log_p_true, confidence, correct = torch.cat(parts, 1).double().cpu().numpy()
    return {"acc": float(correct.mean()), "nll": calibration.nll(log_p_true),
            "ece": calibration.ece(confidence, correct)}


@torch.no_grad()
def _evaluate_corruptions(config: TrialConfig, forward, p: Prepared, root: Path,
                          device: torch.device) -> list[dict[str, Any]]:
    """Error, NLL and ECE of the trained model on every (corruption, severity) cell."""
    if p.test_set is None:
        raise UserError(f"corruptions={config.corruptions!r}: {config.dataset} streams its images; "
                        "corruptions need an in-memory test set")
    rows = []
    batch = eval_batch_size(config.batch_size)
    for cell in corruption_sets.cells(config, *p.test_set, root, device):
        scores = _evaluate(forward, cell.batches(batch), None, p.num_classes)
        rows.append({"corruption": cell.corruption, "group": cell.group, "severity": cell.severity,
                     "error": 1.0 - scores["acc"], "nll": scores["nll"], "ece": scores["ece"]})
    return rows


@torch.no_grad()
def _drainage_samples(forward, p: Prepared, batch_size: int) -> dict[str, np.ndarray]:
    """Per training sample at the end: the drainage probability and whether its label is wrong."""
    probs = torch.empty(p.n_train, device=p.train_labels.device)
    for idx, images in p.train(torch.arange(p.n_train), batch_size):
        probs[idx] = forward(images).softmax(1)[:, -1]
    return {"drainage_prob": probs.cpu().numpy(), "is_noisy": p.train_is_noisy.cpu().numpy()}

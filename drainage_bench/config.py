"""TrialConfig: one training run, completely described, validated and hashed.

A `TrialConfig` is a frozen value. Everything downstream (trainer, Ray adapter, Optuna adapter,
results store) receives it and nothing else. Its canonical form (the fields in `HASHED_FIELDS`,
as sorted JSON) hashes to a stable `trial_id`, which is how a sweep knows what is already done.

Recipes (``trainer/recipes/<name>.toml``) hold per-dataset defaults; `build_config` layers them:

    recipe [trial]  <  recipe [loss.<name>]  <  caller overrides (spec, --set)

Inside a ``[loss.<name>]`` table, keys that are TrialConfig fields (``lr``, ``l1_delta``,
``weight_decay``, ...) override the trial; every other key is a parameter of the loss.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from drainage_bench.errors import UserError, did_you_mean, lookup

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
VAL_LABELS = ("clean", "noisy")
DEVICES = ("auto", "cpu", "cuda")


def noise_tag(noise: str, rate: float, key: str | None) -> str:
    """Compact noise name: ``clean``, ``asym0.4``, ``human-worse_label``, ``file-<hash prefix>``."""
    if noise == "none":
        return "clean"
    if noise in ("human", "file"):
        return f"{noise}-{key or 'default'}"
    return f"{noise}{rate:g}"


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training run needs. Construct with `build_config` (recipes + overrides)."""

    dataset: str
    loss: str
    model: str
    epochs: int
    lr: float
    loss_params: tuple[tuple[str, Any], ...] = ()
    noise: str = "none"
    noise_rate: float = 0.0
    noise_key: str | None = None
    seed: int = 0
    batch_size: int = 128
    optimizer: str = "sgd"
    momentum: float = 0.9
    schedule: str = "cosine"
    step_size: int = 0
    step_gamma: float = 0.1
    weight_decay: float = 0.0
    l1_delta: float = 0.0
    grad_clip: float = 5.0
    augment: str = "none"
    val_fraction: float = 0.0
    val_labels: str = "clean"
    split_seed: int = 0
    eval_every: int = 1
    drainage_logit: float | None = None
    amp: bool | None = None  # bf16 autocast. None: on CUDA only (as in 0.1); true: also on a CPU with bf16; false: never
    # Streamed datasets and real-noise recipes (WebVision, Clothing1M); defaults: as before.
    nesterov: bool = False           # SGD with Nesterov momentum
    train_crop: str = "center"       # training view of streamed images: center | random_resized
    balanced_subsample: int = 0      # >0: each epoch trains on this many samples per class, drawn anew
    pretrained: str | None = None    # a state-dict file (relative: under the data root) to start from
    # Open-set trials (trainer/openset.py): "" is a closed-set trial; "standard:N", "random:K:SEED",
    # "known:0,1,...", "vs:DATASET" name the known classes; "relabel" keeps the unknown classes'
    # training samples with random known labels.
    openset: str = ""
    openset_unknown_train: str = "drop"
    # Supervised mollification (trainer/mollify.py); the mollify_* settings count only with mollify on.
    mollify: bool = False
    mollify_roles: str = "clean,noise,blur"
    mollify_beta: float = 2.0
    mollify_npow: float = 1.0
    mollify_bpow: float = 1.0
    mollify_target: str = "classes"
    # Corrupted test sets evaluated after training (trainer/corruptions.py): "" none, "synthetic",
    # "cifar10-c", ...; corruption_images > 0 evaluates only the first that many test images.
    corruptions: str = ""
    corruption_images: int = 0
    # Not part of the trial's identity (see NOT_HASHED): where and how it runs, how it is shown.
    device: str = "auto"
    data_root: str | None = None
    label: str | None = None
    params_source: str | None = None
    noise_file: str | None = None  # file noise: the label file (its content hash is the noise_key)
    deterministic: bool = False  # torch's deterministic algorithms (for CUDA; the CPU path already is)
    compile: bool = False  # torch.compile the model and the loss for training (trainer/compiled.py)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))
        object.__setattr__(self, "loss_params", _freeze_params(self.loss_params))
        _validate(self)

    @property
    def params(self) -> dict[str, Any]:
        """The loss parameters as a dict."""
        return dict(self.loss_params)

    def canonical(self) -> dict[str, Any]:
        """The fields that define the experiment, as plain JSON-able values.

        Settings that have no effect (a step size under a cosine schedule, the split's seed
        without a split) are left out, so they cannot make one experiment look like two; so are
        fields added after version 0.1 while they hold their default (see IDENTITY_V1).
        """
        unused = set(NOT_HASHED)
        if self.schedule != "step":
            unused |= {"step_size", "step_gamma"}
        if self.val_fraction == 0:
            unused |= {"val_labels", "split_seed"}
        if not self.mollify:
            unused |= MOLLIFY_SETTINGS
        else:
            roles = self.mollify_roles.split(",")
            unused |= {"mollify_npow"} if "noise" not in roles else set()
            unused |= {"mollify_bpow"} if "blur" not in roles else set()
        if not self.corruptions:
            unused |= {"corruption_images"}
        out = {}
        for f in dataclasses.fields(self):
            if f.name in unused:
                continue
            if f.name not in IDENTITY_V1 and getattr(self, f.name) == f.default:
                continue  # a field added later, at its default: existing trial_ids stay valid
            value = getattr(self, f.name)
            out[f.name] = dict(value) if f.name == "loss_params" else value
        # amp: the default (bf16 on CUDA, fp32 on a CPU) hashes as 0.1's amp=true did; an explicit
        # amp=true is bf16 on a CPU too, a different computation there, so it hashes differently.
        out["amp"] = {None: True, True: "bf16", False: False}[self.amp]
        return out

    @property
    def trial_id(self) -> str:
        """``<loss>-<noise>-s<seed>-<hash>``: readable, and stable across runs and machines."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"{self.loss}-{self.noise_tag}-s{self.seed}-{digest}"

    @property
    def noise_tag(self) -> str:
        return noise_tag(self.noise, self.noise_rate, self.noise_key)

    def to_dict(self) -> dict[str, Any]:
        """Every field, loss_params as a dict (for JSON, Ray configs and records)."""
        out = dataclasses.asdict(self)
        out["loss_params"] = dict(self.loss_params)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialConfig":
        return cls(**values)

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)


# compile changes the numbers by float rounding only (measured: docs/benchmarks.md), like device.
NOT_HASHED = frozenset({"device", "data_root", "label", "params_source", "noise_file", "deterministic", "compile"})
# The hashed fields of version 0.1. Every field added since is hashed only when it differs from
# its default, so that an upgrade never changes the trial_id of a finished trial (stores outlive
# versions). A new field therefore needs a default that means "as before".
IDENTITY_V1 = frozenset({
    "dataset", "loss", "model", "epochs", "lr", "loss_params", "noise", "noise_rate", "noise_key", "seed",
    "batch_size", "optimizer", "momentum", "schedule", "step_size", "step_gamma", "weight_decay", "l1_delta",
    "grad_clip", "augment", "val_fraction", "val_labels", "split_seed", "eval_every", "drainage_logit", "amp"})
MOLLIFY_SETTINGS = frozenset({"mollify_roles", "mollify_beta", "mollify_npow", "mollify_bpow", "mollify_target"})
FIELDS = {f.name: f for f in dataclasses.fields(TrialConfig)}
FIELD_TYPES = {
    name: (int if f.type == "int" else float if f.type in ("float", "float | None") else str)
    for name, f in FIELDS.items()
}


def _freeze_params(params) -> tuple[tuple[str, Any], ...]:
    items = params.items() if isinstance(params, dict) else params
    return tuple(sorted((str(k), v) for k, v in items))


def _check(condition: bool, field_name: str, value: Any, expected: str) -> None:
    if not condition:
        raise UserError(f"{field_name}={value!r} is invalid: {expected}")


def _validate(c: TrialConfig) -> None:
    # Imported here: the registries import torch, and config must stay cheap to import.
    from drainage_bench.trainer import augment, corruptions, data, losses, models, mollify, noise

    _check(c.dataset in data.DATASETS, "dataset", c.dataset, did_you_mean(c.dataset, data.DATASETS))
    _check(c.loss in losses.LOSSES, "loss", c.loss, did_you_mean(c.loss, losses.LOSSES))
    _check(c.model in models.MODELS, "model", c.model, did_you_mean(c.model, models.MODELS))
    _check(c.augment in augment.AUGMENTS, "augment", c.augment, did_you_mean(c.augment, augment.AUGMENTS))
    object.__setattr__(c, "loss_params", _freeze_params(losses.validate_loss_params(c.loss, c.params)))
    info = data.DATASETS[c.dataset]
    # human noise: the dataset's default key, spelled out (one experiment, one trial_id)
    object.__setattr__(c, "noise_key", noise.validate_noise(c.noise, c.noise_rate, info.num_classes, c.dataset,
                                                            c.noise_key, path=c.noise_file))
    for name, low in (("seed", 0), ("epochs", 1), ("batch_size", 1), ("eval_every", 1), ("step_size", 0),
                      ("split_seed", 0)):
        value = getattr(c, name)
        _check(_integer(value) and value >= low, name, value, f"an integer >= {low}")
    _check(c.optimizer in OPTIMIZERS, "optimizer", c.optimizer, did_you_mean(c.optimizer, OPTIMIZERS))
    _check(c.schedule in SCHEDULES, "schedule", c.schedule, did_you_mean(c.schedule, SCHEDULES))
    _check(c.val_labels in VAL_LABELS, "val_labels", c.val_labels, did_you_mean(c.val_labels, VAL_LABELS))
    _check(c.amp is None or isinstance(c.amp, bool), "amp", c.amp,
           "true (bf16 autocast, also on a CPU with bf16), false (fp32), or none (bf16 on CUDA only)")
    _check(isinstance(c.compile, bool), "compile", c.compile, "true or false (torch.compile for training)")
    _check(isinstance(c.deterministic, bool), "deterministic", c.deterministic, "true or false (deterministic CUDA kernels)")
    _check(c.device in DEVICES, "device", c.device, did_you_mean(c.device, DEVICES))
    _validate_streamed(c)
    _check(_finite(c.lr) and c.lr > 0, "lr", c.lr, "a number > 0")
    for name in ("momentum", "weight_decay", "l1_delta", "grad_clip", "step_gamma"):
        _check(_finite(getattr(c, name)) and getattr(c, name) >= 0, name, getattr(c, name), "a number >= 0")
    _check(_finite(c.val_fraction) and 0 <= c.val_fraction < 1, "val_fraction", c.val_fraction, "a fraction in [0, 1) (0.2 = the 80/20 split)")
    _check(c.schedule != "step" or c.step_size >= 1, "step_size", c.step_size, "an integer >= 1 with schedule=step")
    _check(isinstance(c.mollify, bool), "mollify", c.mollify, "true or false (supervised mollification)")
    # checked even with mollify off (a typo is still a typo); they enter the hash only with it on
    object.__setattr__(c, "mollify_roles", ",".join(mollify.parse_roles(c.mollify_roles)))
    for name in ("mollify_beta", "mollify_npow", "mollify_bpow"):
        _check(_finite(getattr(c, name)) and getattr(c, name) > 0, name, getattr(c, name), "a number > 0")
    _check(c.mollify_target in mollify.TARGETS, "mollify_target", c.mollify_target,
           did_you_mean(c.mollify_target, mollify.TARGETS))
    _check(not c.mollify or c.mollify_target != "sink" or losses.LOSSES[c.loss].extra_outputs == 1,
           "mollify_target", c.mollify_target, "sink puts the smoothing mass on the drainage output: only for loss=drainage")
    corruptions.validate_corruptions(c.corruptions, c.dataset)
    _check(not (c.openset and c.corruptions not in ("", "synthetic")), "corruptions", c.corruptions,
           "'synthetic' or '' with openset (the released files label every class; the model knows some)")
    _check(_integer(c.corruption_images) and c.corruption_images >= 0, "corruption_images", c.corruption_images,
           "an integer >= 0 (0: the whole test set)")
    if c.drainage_logit is not None:
        _check(_finite(c.drainage_logit), "drainage_logit", c.drainage_logit,
               "a finite number (a constant drainage logit has no default: name it, e.g. drainage_logit=2.0), "
               "or none (a learned drainage logit)")
        _check(losses.LOSSES[c.loss].extra_outputs == 1, "drainage_logit", c.drainage_logit,
               "only the drainage loss has a drainage node")
    _check(isinstance(c.openset, str), "openset", c.openset, "a string such as standard:0 (see trainer/openset.py)")
    if c.openset or c.openset_unknown_train != "drop":
        from drainage_bench.trainer.openset import validate_openset

        validate_openset(c.openset, c.dataset, c.openset_unknown_train)
        _check(c.noise in ("none", "sym", "instance"), "noise", c.noise,
               "open-set trials take none, sym or instance noise (asym class maps and human labels name all classes)")


def _validate_streamed(c: TrialConfig) -> None:
    """The fields of the real-noise recipes: Nesterov, the training crop, the subsample, the weights."""
    from drainage_bench.trainer import data, stream

    _check(isinstance(c.nesterov, bool), "nesterov", c.nesterov, "true or false (SGD with Nesterov momentum)")
    _check(not c.nesterov or (c.optimizer == "sgd" and c.momentum > 0), "nesterov", c.nesterov,
           "Nesterov momentum needs optimizer=sgd and momentum > 0")
    _check(c.train_crop in stream.CROPS, "train_crop", c.train_crop, did_you_mean(c.train_crop, stream.CROPS))
    _check(c.train_crop == "center" or c.dataset in data.STREAMED_DATASETS, "train_crop", c.train_crop,
           "only the streamed datasets (" + ", ".join(data.STREAMED_DATASETS) + ") crop while decoding")
    _check(_integer(c.balanced_subsample) and c.balanced_subsample >= 0, "balanced_subsample",
           c.balanced_subsample, "an integer >= 0: samples per class per epoch (0: the whole training set)")
    _check(c.pretrained is None or (isinstance(c.pretrained, str) and c.pretrained.strip() != ""), "pretrained",
           c.pretrained, "a state-dict file (absolute, or relative to the data root), or none")


def _integer(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------------------------------------
# Recipes


@cache
def load_recipe(name: str) -> dict[str, Any]:
    """A recipe file as a dict, with ``extends = "other"`` resolved (the base first)."""
    path = resources.files("drainage_bench.trainer") / "recipes" / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"no recipe named {name!r}; " + did_you_mean(name, available_recipes()))
    recipe = tomllib.loads(path.read_text())
    base_name = recipe.pop("extends", None)
    if base_name is None:
        return recipe
    base = load_recipe(base_name)
    merged = {"trial": {**base.get("trial", {}), **recipe.get("trial", {})}, "loss": dict(base.get("loss", {}))}
    for loss, values in recipe.get("loss", {}).items():
        merged["loss"][loss] = {**merged["loss"].get(loss, {}), **values}
    return merged


def available_recipes() -> list[str]:
    folder = resources.files("drainage_bench.trainer") / "recipes"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def split_overrides(loss: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``{key: value}`` into (trial fields, loss parameters).

    ``loss.alpha`` and a bare ``alpha`` both name a loss parameter; anything that is neither a
    field nor a parameter of `loss` is an error that lists both.
    """
    from drainage_bench.trainer.losses import loss_defaults

    params_valid = loss_defaults(loss)
    trial, params = {}, {}
    for key, value in overrides.items():
        name = key.removeprefix("loss.")
        if key.startswith("loss.") or (name not in FIELDS and name in params_valid):
            if name not in params_valid:
                raise UserError(f"unknown parameter {key!r} of loss {loss!r}; "
                                + did_you_mean(name, params_valid or ["(none)"]))
            params[name] = value
        elif name in FIELDS and name not in ("loss_params",):
            trial[name] = value
        else:
            raise UserError(f"unknown setting {key!r}; valid: trial fields "
                            + ", ".join(sorted(n for n in FIELDS if n != "loss_params"))
                            + f"; loss parameters of {loss}: " + (", ".join(params_valid) or "none"))
    return trial, params


def refuse_chosen(overrides: dict[str, Any], chosen: dict[str, str]) -> None:
    """A setting (``--set`` or a spec's ``set``) of a field the command chooses itself would be
    dropped without a word; `chosen` maps each such field to where it is chosen."""
    for key, where in chosen.items():
        if key in overrides:
            raise UserError(f"setting {key}={overrides[key]!r} would be ignored: the {key} comes from {where}")


def build_config(dataset: str, loss: str, overrides: dict[str, Any] | None = None) -> TrialConfig:
    """The recipe's defaults for (dataset, loss), then `overrides` (fields or loss parameters)."""
    from drainage_bench.trainer.data import DATASETS
    from drainage_bench.trainer.losses import LOSSES

    refuse_chosen(overrides or {}, {"dataset": "--dataset (train, tune) or the spec's dataset",
                                    "loss": "--loss (train, tune) or the spec's [[losses]]"})
    info = lookup("dataset", dataset, DATASETS)
    lookup("loss", loss, LOSSES)
    recipe = load_recipe(info.recipe)
    trial_values, params = split_overrides(loss, recipe.get("loss", {}).get(loss, {}))
    values = {**recipe.get("trial", {}), **trial_values}
    extra_trial, extra_params = split_overrides(loss, overrides or {})
    values.update(extra_trial)
    params.update(extra_params)
    values.update(dataset=dataset, loss=loss, loss_params=params)
    return TrialConfig(**values)


def _coerce(name: str, value: Any) -> Any:
    """Ints where an int field got a whole float, floats where a float field got an int."""
    kind = FIELD_TYPES.get(name)
    if value is None or name == "loss_params":
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["lr=0.1", "loss.alpha=2", "schedule=step", "drainage_logit=none"]`` -> a dict.

    Values are read as TOML scalars when they parse (numbers, booleans, quoted strings), ``none``
    means None, and anything else is taken as a plain string.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is malformed; write key=value, e.g. --set lr=0.05")
        out[key.strip()] = parse_scalar(raw.strip())
    return out


def parse_scalar(raw: str) -> Any:
    if raw.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw

"""Sweep specs: TOML files that expand into TrialConfigs.

A spec names one dataset and the grid over losses x noise settings x seeds::

    description = "what this sweep shows"
    dataset = "digits"
    seeds = [0, 1]
    metric = "final_test_acc"          # the table's default metric
    set = { epochs = 30 }              # recipe overrides for every trial
    openset = ["standard:0", "standard:1"]   # open-set splits: one more grid axis (optional)

    [resources]                        # per trial; the command line wins
    cpus_per_trial = 1
    gpus_per_trial = 0.25              # used only where a GPU is present

    [[noise]]
    type = "asym"
    rates = [0.2, 0.4]
    [[noise]]
    type = "human"
    keys = ["worse_label", "aggre_label"]
    [[noise]]
    type = "file"                      # a label file someone else made (.npz or .csv), relative
    path = "labels.npz"                # to the spec file's folder

    [[losses]]
    name = "drainage"
    params = { alpha = 1.0 }           # or params = "tuned": the best trial of the Optuna study
    set = { l1_delta = 1e-3 }          # this loss's own recipe overrides
    label = "Drainage"                 # the row's name in tables
    space = { alpha = "loguniform:0.01:10" }   # `tune`'s search ranges for this loss

Named specs ship in ``sweeps/specs/``; a path to a user's own file works the same way.
"""
from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from drainage_bench.config import TrialConfig, build_config, refuse_chosen
from drainage_bench.errors import UserError, did_you_mean

TOP_KEYS = {"description", "dataset", "seeds", "metric", "set", "resources", "noise", "losses", "openset"}
LOSS_KEYS = {"name", "params", "set", "label", "space"}
NOISE_KEYS = {"type", "rates", "keys", "path"}
RESOURCE_KEYS = {"cpus_per_trial", "gpus_per_trial", "max_concurrent"}

# Looks up tuned parameters: (dataset, loss, noise_type, rate, key) -> (params, source).
TunedLookup = Callable[[TrialConfig], tuple[dict[str, Any], str]]


@dataclass(frozen=True)
class LossEntry:
    name: str
    params: dict[str, Any] | str = field(default_factory=dict)  # dict, or "tuned"
    set: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    space: dict[str, str] = field(default_factory=dict)  # Optuna ranges for `tune`: name -> "loguniform:LO:HI"


@dataclass(frozen=True)
class NoiseSetting:
    type: str
    rate: float = 0.0
    key: str | None = None
    path: str | None = None  # file noise: the label file (absolute)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    dataset: str
    losses: tuple[LossEntry, ...]
    noise: tuple[NoiseSetting, ...]
    seeds: tuple[int, ...]
    metric: str = "final_test_acc"  # a table metric name (see catalog.METRICS)
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    openset: tuple[str, ...] = ("",)  # open-set splits (trainer/openset.py); "" = closed set

    def expand(self, extra: dict[str, Any] | None = None, tuned: TunedLookup | None = None) -> list[TrialConfig]:
        """Every TrialConfig of the sweep, in table order: loss, then noise, then split, then seed."""
        configs = []
        grid = {**dict.fromkeys(("noise", "noise_rate", "noise_key", "noise_file"), "the spec's [[noise]] (or --noise)"),
                "seed": "the spec's seeds", "label": "the spec's [[losses]] label"}
        if self.openset != ("",):  # without an openset list, `set = { openset = ... }` chooses the split
            grid["openset"] = "the spec's openset"
        for entry in self.losses:
            refuse_chosen({**self.overrides, **entry.set, **(extra or {})}, grid)
            for noise in self.noise:
                for split, seed in itertools.product(self.openset, self.seeds):
                    values = {**self.overrides, **entry.set, **(extra or {}),
                              "noise": noise.type, "noise_rate": noise.rate, "noise_key": noise.key,
                              **({"noise_file": noise.path} if noise.path else {}),
                              "seed": seed, "label": entry.label, **({"openset": split} if split else {})}
                    if isinstance(entry.params, dict):
                        values.update({f"loss.{k}": v for k, v in entry.params.items()})
                    config = build_config(self.dataset, entry.name, values)
                    if entry.params == "tuned":
                        if tuned is None:
                            raise UserError(f"spec {self.name!r}: loss {entry.name!r} asks for tuned parameters; "
                                            "run `drainage-bench tune` first")
                        # Tuned values may be loss parameters or trial fields (ANL's l1_delta).
                        params, source = tuned(config)
                        config = build_config(self.dataset, entry.name, {**values, **params})
                        config = config.replace(params_source=source)
                    configs.append(config)
        seen: set[str] = set()
        for config in configs:  # a loss, rate or seed listed twice would run (and count) as one trial
            if config.trial_id in seen:
                split = f", open-set split {config.openset}" if config.openset else ""
                raise UserError(f"spec {self.name!r}: the trial {config.trial_id} comes twice from the grid "
                                f"(loss {config.label or config.loss}, noise {config.noise_tag}{split}, seed "
                                f"{config.seed}): list each loss, noise rate, split and seed once (a loss twice "
                                "needs other settings)")
            seen.add(config.trial_id)
        return configs


def with_noise(spec: SweepSpec, noise: list[str] | None) -> SweepSpec:
    """The spec with its noise settings replaced by ``--noise`` texts (``asym:0.4``, ``file:PATH``)."""
    from drainage_bench.trainer.noise import noise_fields

    if not noise:
        return spec
    settings = []
    for text in noise:
        f = noise_fields(text)
        settings.append(NoiseSetting(f["noise"], f["noise_rate"], f["noise_key"], f.get("noise_file")))
    return dataclasses.replace(spec, noise=tuple(settings))


def _fail(source: str, what: str) -> UserError:
    return UserError(f"spec {source}: {what}")


def _unknown(source: str, where: str, keys, valid) -> None:
    extra = sorted(set(keys) - set(valid))
    if extra:
        raise _fail(source, f"unknown key {extra[0]!r} in {where}; " + did_you_mean(extra[0], valid))


def builtin_specs() -> dict[str, Path]:
    folder = resources.files("drainage_bench.sweeps") / "specs"
    return {p.name.removesuffix(".toml"): Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def load_spec(name_or_path: str) -> SweepSpec:
    """A shipped spec by name, or a user's TOML file by path."""
    specs = builtin_specs()
    path = Path(name_or_path)
    if name_or_path in specs:
        path = specs[name_or_path]
    elif not (path.suffix == ".toml" and path.is_file()):
        raise UserError(f"no sweep named {name_or_path!r} and no such .toml file; "
                        + did_you_mean(name_or_path, specs) + " (or give a path to a spec file)")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise _fail(str(path), f"is not valid TOML ({err}); fix the file") from None
    return parse_spec(raw, name=path.stem, source=str(path))


def parse_spec(raw: dict[str, Any], name: str, source: str = "<spec>") -> SweepSpec:
    """Validate the structure of a spec (the trial values are validated by TrialConfig)."""
    _unknown(source, "the spec", raw, TOP_KEYS)
    for key in ("dataset", "losses", "noise"):
        if key not in raw:
            raise _fail(source, f"missing {key!r}; a spec needs dataset, losses and noise")
    if not isinstance(raw["dataset"], str):
        raise _fail(source, "'dataset' must be a string")
    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds)):
        raise _fail(source, f"'seeds' must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _fail(source, f"'seeds' lists a seed twice: {seeds!r}")
    metric = raw.get("metric", "final_test_acc")
    from drainage_bench.catalog import get_metric

    try:
        get_metric(metric)
    except UserError as err:
        raise _fail(source, str(err)) from None
    resources_ = raw.get("resources", {})
    if not isinstance(resources_, dict):
        raise _fail(source, "[resources] must be a table")
    _unknown(source, "[resources]", resources_, RESOURCE_KEYS)
    for key, value in resources_.items():
        whole = key == "max_concurrent"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            raise _fail(source, f"[resources] {key} must be {'an integer' if whole else 'a number'}, got {value!r}")
    return SweepSpec(
        name=name, dataset=raw["dataset"], losses=tuple(_loss_entries(raw["losses"], source)),
        noise=tuple(_noise_settings(raw["noise"], source)), seeds=tuple(seeds), metric=metric,
        description=str(raw.get("description", "")), overrides=_table(raw.get("set", {}), source, "set"),
        resources=resources_, source=source, openset=_splits(raw.get("openset", [""]), source))


def _splits(value: Any, source: str) -> tuple[str, ...]:
    """``openset``: one split or a list of them (each checked by TrialConfig when expanded)."""
    items = [value] if isinstance(value, str) else value
    if not (isinstance(items, list) and items and all(isinstance(v, str) for v in items)):
        raise _fail(source, f"'openset' must be a split or a non-empty list of splits "
                            f"(e.g. [\"standard:0\", \"standard:1\"]), got {value!r}")
    if len(set(items)) != len(items):
        raise _fail(source, f"'openset' lists a split twice: {items!r}")
    return tuple(items)


def _table(value: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(source, f"{where!r} must be a table of key = value")
    return value


def _list_of_tables(value: Any, source: str, where: str) -> list[dict[str, Any]]:
    if not (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
        raise _fail(source, f"{where!r} must be a non-empty array of tables ([[{where}]])")
    return value


def _loss_entries(value: Any, source: str) -> list[LossEntry]:
    entries = []
    for item in _list_of_tables(value, source, "losses"):
        _unknown(source, "[[losses]]", item, LOSS_KEYS)
        if not isinstance(item.get("name"), str):
            raise _fail(source, "every [[losses]] entry needs a name")
        if not isinstance(item.get("label", ""), str):
            raise _fail(source, f"losses.{item['name']}.label must be a string (the row's name in tables)")
        params = item.get("params", {})
        if params != "tuned":
            params = _table(params, source, f"losses.{item['name']}.params")
        entries.append(LossEntry(name=item["name"], params=params,
                                 set=_table(item.get("set", {}), source, f"losses.{item['name']}.set"),
                                 label=item.get("label"),
                                 space=_table(item.get("space", {}), source, f"losses.{item['name']}.space")))
    return entries


def _noise_settings(value: Any, source: str) -> list[NoiseSetting]:
    settings = []
    for item in _list_of_tables(value, source, "noise"):
        _unknown(source, "[[noise]]", item, NOISE_KEYS)
        kind = item.get("type")
        if not isinstance(kind, str):
            raise _fail(source, "every [[noise]] entry needs a type")
        takes = {"none": set(), "human": {"keys"}, "file": {"path"}}.get(kind, {"rates"})
        for key in sorted(set(item) - {"type"} - takes):  # e.g. rates under type = "none": silently dropped
            raise _fail(source, f"noise {kind!r} takes no {key!r}"
                                + (f" (it takes {', '.join(sorted(takes))})" if takes else ""))
        if kind == "human":
            keys = item.get("keys")
            if keys is not None and not (isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys)):
                raise _fail(source, f'noise "human" needs keys = ["worse_label", ...] (or no keys: the '
                                    f"dataset's default), got {keys!r}")
            settings += [NoiseSetting("human", 0.0, key) for key in keys or [None]]
        elif kind == "none":
            settings.append(NoiseSetting("none"))
        elif kind == "file":
            if not isinstance(item.get("path"), str):
                raise _fail(source, 'noise "file" needs path = "labels.npz" (relative to the spec\'s folder)')
            folder = Path(source).parent if source != "<spec>" else Path.cwd()
            settings.append(NoiseSetting("file", path=str((folder / Path(item["path"]).expanduser()).absolute())))
        else:
            rates = item.get("rates")
            if not (isinstance(rates, list) and rates and all(isinstance(r, (int, float)) for r in rates)):
                raise _fail(source, f"noise {kind!r} needs rates = [numbers], got {rates!r}")
            settings += [NoiseSetting(kind, float(r)) for r in rates]
    return settings

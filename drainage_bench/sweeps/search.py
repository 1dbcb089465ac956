"""Optuna search of loss parameters on the 80/20 split: ``drainage-bench tune``.

One persistent study per (dataset, loss, noise), named ``<dataset>-<loss>-<noise_tag>``
(``digits-drainage-asym0.4``), in any Optuna storage: SQLite by default
(``sqlite:///results/optuna.db``), PostgreSQL / MySQL URLs, or a journal file path. Every trial
trains on the 80% part with the noisy labels and is scored on the 20% validation part (clean
labels unless ``val_labels="noisy"``); the test split is never evaluated
(``run_trial(..., evaluate_test=False)``). docs/search.md explains the design; in short:

* One writer. A `StudyOwner` makes every storage call of a search: ask, report and
  should_prune, tell, heartbeats. With Ray it is an actor pinned to the driver's node and the
  trials are Ray tasks that send each epoch's validation accuracy to it and stop when it answers
  "prune"; without Ray it is a plain object and trials run one by one in this process. One
  writer per search keeps SQLite safe; several drivers (machines) share a server database.
* The study decides when to stop: trials start until the study holds ``trials`` COMPLETE ones.
  Pruned and failed trials do not count, so running the same command again tops a study up.
* Heartbeats: the owner stamps its running trials every ``heartbeat`` seconds (a trial system
  attribute: host, driver pid, time). A RUNNING trial whose driver is gone (a dead pid on this
  host, or no stamp for 3 beats) is marked FAIL and queued once more with the same parameters
  (Optuna's RetryHeartbeatStaleTrialCallback) - when a search starts and while it runs.
"""
from __future__ import annotations

import math
import os
import socket
import threading
import time
import tomllib
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from drainage_bench.config import FIELDS, TrialConfig, build_config, parse_scalar, refuse_chosen
from drainage_bench.errors import UserError, did_you_mean

OBJECTIVES = ("final_val_acc", "best_val_acc")
PRUNERS = ("median", "hyperband", "none")
VAL_FRACTION = 0.2
# Trial fields a space may search besides the loss's own parameters (l1_delta: ANL's delta).
SEARCHABLE_FIELDS = ("l1_delta", "lr", "weight_decay")
HEARTBEAT_ATTR = "drainage_bench:heartbeat"
STALE_BEATS = 3                 # a RUNNING trial silent this many heartbeats is taken as lost
MAX_FAILURES_IN_A_ROW = 10
OUTCOME_ATTRS = ("best_val_acc", "final_val_acc", "best_val_epoch", "epochs_run", "wall_seconds", "error")
DISTRIBUTION_FORMS = "valid: loguniform:LOW:HIGH (0 < LOW < HIGH), uniform:LOW:HIGH (LOW < HIGH), choice:A,B,..."

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# ---------------------------------------------------------------------------------------------
# Storage


def default_storage(results: str | Path = "results") -> str:
    return f"sqlite:///{Path(results) / 'optuna.db'}"


def resolve_storage(storage: str | None, results: str | Path = "results") -> str:
    """The storage URL with file paths made absolute (Ray's processes may start elsewhere).

    ``sqlite:///FILE``, any other SQLAlchemy URL (``postgresql://...``, ``mysql://...``), or a
    path, which names an Optuna journal file.
    """
    url = storage or default_storage(results)
    if url.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).expanduser().resolve())
    if "://" in url:
        return url
    path = Path(url).expanduser()
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        raise UserError(f"--storage {url}: a plain path names an Optuna journal file; "
                        f"for SQLite write sqlite:///{url}")
    return str(path.resolve())


def _local_file(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None if "://" in url else Path(url)


def storage_exists(url: str) -> bool:
    """False only for a SQLite or journal file that is not there (a server is assumed to exist)."""
    path = _local_file(url)
    return path is None or path.is_file()


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL from `resolve_storage`, creating a local file's folder."""
    path = _local_file(url)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if "://" not in url:
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url))
        # A long busy timeout: `study list` may read while a search writes.
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as err:  # noqa: BLE001 - a driver missing, a server down, a bad URL: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot open Optuna storage {url}: {first}") from None


# ---------------------------------------------------------------------------------------------
# Search spaces


def parse_distribution(text: str, where: str) -> BaseDistribution:
    """``loguniform:1e-3:1e2``, ``uniform:0.05:1`` or ``choice:none,0.5,1`` -> a distribution."""
    kind, _, rest = text.strip().partition(":")
    try:
        if kind in ("loguniform", "uniform"):
            low, high = (float(x) for x in rest.split(":"))
            if low < high and (kind == "uniform" or low > 0):
                return FloatDistribution(low, high, log=kind == "loguniform")
        elif kind == "choice" and rest.strip():
            return CategoricalDistribution([parse_scalar(v.strip()) for v in rest.split(",")])
    except ValueError:
        pass
    raise UserError(f"{where}: {text!r} is not a distribution; {DISTRIBUTION_FORMS}")


def format_distribution(dist: BaseDistribution) -> str:
    if isinstance(dist, FloatDistribution):
        return f"{'loguniform' if dist.log else 'uniform'}:{dist.low:g}:{dist.high:g}"
    return "choice:" + ",".join("none" if c is None else str(c) for c in dist.choices)


@cache
def shipped_spaces() -> dict[str, dict[str, str]]:
    path = resources.files("drainage_bench.sweeps.spaces") / "default.toml"
    return tomllib.loads(path.read_text())


def load_space(loss: str, overrides: list[str] | None = None) -> dict[str, BaseDistribution]:
    """The shipped space of `loss`, then ``NAME=DISTRIBUTION`` or ``NAME=off`` overrides."""
    space = {name: parse_distribution(text, f"search space of {loss} (spaces/default.toml), {name}")
             for name, text in shipped_spaces().get(loss, {}).items()}
    for item in overrides or []:
        name, sep, text = item.partition("=")
        name = name.strip().removeprefix("loss.")
        if not sep or not name:
            raise UserError(f"--space {item!r} is malformed; write NAME=loguniform:LOW:HIGH, or NAME=off "
                            "to keep a parameter at its recipe value")
        if text.strip() == "off":
            if name not in space:
                raise UserError(f"--space {item!r}: {name} is not searched for {loss}; "
                                + did_you_mean(name, space or ["(nothing)"]))
            del space[name]
        else:
            space[name] = parse_distribution(text, f"--space {name}")
    return space


def _contains(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, FloatDistribution):
        return isinstance(value, (int, float)) and dist.low <= value <= dist.high
    return value in dist.choices


def _extremes(dist: BaseDistribution) -> tuple:
    return (dist.low, dist.high) if isinstance(dist, FloatDistribution) else tuple(dist.choices)


# ---------------------------------------------------------------------------------------------
# What one study searches


def study_name(config: TrialConfig) -> str:
    """``<dataset>-<loss>-<noise_tag>``, e.g. ``digits-drainage-asym0.4``."""
    return f"{config.dataset}-{config.loss}-{config.noise_tag}"


def noise_arg(noise: str, rate: float, key: str | None, path: str | None = None) -> str:
    """The ``--noise`` text of a noise setting: ``asym:0.4``, ``human:worse_label``, ``none``, ``file:PATH``."""
    if noise == "file":
        return f"file:{path}"
    if noise == "human":
        return f"human:{key}" if key else "human"
    return noise if noise == "none" else f"{noise}:{rate:g}"


def tune_command(config: TrialConfig, storage: str | None = None) -> str:
    command = (f"drainage-bench tune {config.dataset} --loss {config.loss} "
               f"--noise {noise_arg(config.noise, config.noise_rate, config.noise_key, config.noise_file)}")
    return command + (f" --storage {storage}" if storage else "")


@dataclass(frozen=True)
class Search:
    """One study's search: the base trial, the space, when to stop, how to score and prune."""

    base: TrialConfig
    space: dict[str, BaseDistribution]
    trials: int = 50
    objective: str = "final_val_acc"
    pruner: str | optuna.pruners.BasePruner = "median"
    heartbeat: float = 20.0

    @property
    def name(self) -> str:
        return study_name(self.base)

    def trial_config(self, sampled: dict[str, Any]) -> TrialConfig:
        """The base trial with sampled values (loss parameters or trial fields)."""
        fields = {k: v for k, v in sampled.items() if k in FIELDS}
        params = {k: v for k, v in sampled.items() if k not in FIELDS}
        return self.base.replace(loss_params={**self.base.params, **params}, **fields)

    def realized(self, config: TrialConfig) -> dict[str, Any]:
        """What a trial hands to a sweep: every loss parameter, and the searched trial fields."""
        return {**config.params, **{k: getattr(config, k) for k in self.space if k in FIELDS}}

    def recipe_values(self) -> dict[str, Any]:
        """The base trial's values of the searched names that lie inside the space."""
        values = {**self.base.params, **{k: getattr(self.base, k) for k in SEARCHABLE_FIELDS}}
        return {k: values[k] for k, d in self.space.items() if values.get(k) is not None and _contains(d, values[k])}

    def identity(self) -> dict[str, Any]:
        """What every trial of the study shares: the base trial's fields that are not searched."""
        out = {k: v for k, v in self.base.canonical().items() if k != "loss_params" and k not in self.space}
        return {**out, "objective": self.objective}

    def check(self) -> None:
        """Every name in the space is searchable and both ends of each range are valid values."""
        valid = [*self.base.params, *SEARCHABLE_FIELDS]
        if not self.space:
            raise UserError(f"nothing to search for loss {self.base.loss!r}: it has no parameters in the "
                            "shipped space; add some with --space NAME=loguniform:LOW:HIGH")
        for name, dist in self.space.items():
            if name not in valid:
                raise UserError(f"search space: {name!r} is neither a parameter of loss {self.base.loss!r} "
                                "nor a searchable trial field; " + did_you_mean(name, valid))
            for value in _extremes(dist):
                try:
                    self.trial_config({name: value})
                except UserError as err:
                    raise UserError(f"search space {name}={format_distribution(dist)} reaches an invalid value "
                                    f"({err}); narrow it with --space {name}=...") from None


def make_search(dataset: str, loss: str, noise: str, *, overrides: dict[str, Any] | None = None,
                space: list[str] | None = None, trials: int = 50, objective: str = "final_val_acc",
                pruner: str | optuna.pruners.BasePruner = "median", seed: int = 0,
                val_labels: str = "clean", heartbeat: float = 20.0) -> Search:
    """A validated `Search` for (dataset, loss, noise) on the 80/20 split."""
    from drainage_bench.trainer.noise import noise_fields

    refuse_chosen(overrides or {}, {**dict.fromkeys(("noise", "noise_rate", "noise_key", "noise_file"), "--noise"),
                                     "seed": "--seed", "val_labels": "--val-labels"})
    values = {"val_fraction": VAL_FRACTION, **(overrides or {}), **noise_fields(noise), "seed": seed,
              "val_labels": val_labels}
    base = build_config(dataset, loss, values)
    if base.val_fraction <= 0:
        raise UserError("val_fraction=0 leaves no validation part to score trials on; "
                        f"leave it at {VAL_FRACTION} (the 80/20 split) or set another fraction in (0, 1)")
    if trials < 1:
        raise UserError(f"--trials {trials}: give the number of complete trials the study should hold (>= 1)")
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; " + did_you_mean(objective, OBJECTIVES))
    if isinstance(pruner, str) and pruner not in PRUNERS:
        raise UserError(f"unknown pruner {pruner!r}; " + did_you_mean(pruner, PRUNERS))
    if not heartbeat > 0:
        raise UserError(f"--heartbeat {heartbeat}: give a number of seconds > 0")
    search = Search(base=base, space=load_space(loss, space), trials=trials, objective=objective,
                    pruner=pruner, heartbeat=float(heartbeat))
    search.check()
    return search


@dataclass(frozen=True)
class TunePlan:
    """What ``tune TARGET`` runs: one search per (loss, noise), and the spec's resources."""

    searches: list[Search]
    resources: dict[str, Any]


def plan_tune(target: str, losses: list[str] | None = None, noises: list[str] | None = None, *,
              overrides: dict[str, Any] | None = None, **settings: Any) -> TunePlan:
    """Searches for a sweep spec (its dataset and settings) or a dataset name (recipe defaults).

    With a spec, ``losses`` defaults to its losses with ``params = "tuned"`` and ``noises`` to
    all its noise settings; a loss's own ``set`` in the spec applies to its study.
    """
    from drainage_bench.sweeps.spec import builtin_specs, load_spec
    from drainage_bench.trainer.data import DATASETS

    if target in builtin_specs() or target.endswith(".toml"):
        spec = load_spec(target)
        dataset, shared, res = spec.dataset, spec.overrides, spec.resources
        tuned = [e for e in spec.losses if e.params == "tuned"]
        losses = losses or list(dict.fromkeys(e.name for e in tuned))
        if not losses:
            raise UserError(f"spec {spec.name!r} has no loss with params = \"tuned\"; name the losses with --loss")
        noises = noises or [noise_arg(n.type, n.rate, n.key, n.path) for n in spec.noise]
        own = {loss: _loss_set(spec, loss) for loss in losses}
        own_space = {loss: [f"{k}={v}" for k, v in _loss_space(spec, loss).items()] for loss in losses}
    elif target in DATASETS:
        if not (losses and noises):
            raise UserError(f"tune {target}: name --loss and --noise (a sweep spec supplies them from its losses "
                            "with params = \"tuned\" and its noise settings)")
        dataset, shared, res, own, own_space = target, {}, {}, {}, {}
    else:
        raise UserError(f"{target!r} is neither a sweep nor a dataset; "
                        + did_you_mean(target, [*builtin_specs(), *DATASETS]) + " (or a spec .toml file)")
    cli_space = settings.pop("space", None) or []  # the command line wins over the spec
    searches = [make_search(dataset, loss, noise, overrides={**shared, **own.get(loss, {}), **(overrides or {})},
                            space=[*own_space.get(loss, []), *cli_space], **settings)
                for loss in losses for noise in noises]
    return TunePlan(searches=searches, resources=res)


def _loss_space(spec, loss: str) -> dict[str, str]:
    """The search ranges the spec's entries for `loss` give (``space = {alpha = "..."}``)."""
    out: dict[str, str] = {}
    for entry in spec.losses:
        if entry.name == loss:
            out.update(entry.space)
    return out


def _loss_set(spec, loss: str) -> dict[str, Any]:
    """The spec's ``set`` for `loss`: its tuned entry's, else its first entry's, else none."""
    entries = [e for e in spec.losses if e.name == loss]
    tuned = [e for e in entries if e.params == "tuned"]
    sets = {tuple(sorted(e.set.items())) for e in tuned}
    if len(sets) > 1:
        raise UserError(f"spec {spec.name!r} has several tuned entries for {loss!r} with different `set`; "
                        "one study serves one setting: tune with a spec that has one")
    chosen = tuned or entries
    return dict(chosen[0].set) if chosen else {}


# ---------------------------------------------------------------------------------------------
# The study and its single writer


def make_pruner(pruner: str | optuna.pruners.BasePruner, epochs: int) -> optuna.pruners.BasePruner:
    """median: below the median of earlier trials at the same epoch, after a third of the epochs;
    hyperband: successive halving brackets from a tenth of the epochs."""
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=epochs // 3)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 10), max_resource=epochs,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(search: Search, storage: optuna.storages.BaseStorage, url: str) -> optuna.Study:
    """Create or load the study; a new one gets its identity and the recipe values as trial 0.

    The sampler is TPE (multivariate, constant liar for parallel trials), seeded from the trial
    seed and the number of trials so far: a resumed search does not replay the first samples.
    """
    import numpy as np

    study = optuna.create_study(storage=storage, study_name=search.name, direction="maximize",
                                load_if_exists=True, pruner=make_pruner(search.pruner, search.base.epochs))
    attrs = study.user_attrs
    if "identity" not in attrs:
        for key, value in {"identity": search.identity(), "dataset": search.base.dataset, "loss": search.base.loss,
                           "noise": search.base.noise, "noise_rate": search.base.noise_rate,
                           "noise_key": search.base.noise_key, "objective": search.objective}.items():
            study.set_user_attr(key, value)
        if search.recipe_values():
            study.enqueue_trial(search.recipe_values(), user_attrs={"recipe_defaults": True}, skip_if_exists=True)
    else:
        _check_identity(search, attrs["identity"], url)
    seed = int(np.random.SeedSequence([search.base.seed, len(study.trials)]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    return study


def _check_identity(search: Search, stored: dict[str, Any], url: str) -> None:
    mine = search.identity()
    for key in sorted(set(stored) | set(mine)):
        if stored.get(key) != mine.get(key):
            raise UserError(f"study {search.name!r} in {url} was made with {key}={stored.get(key)!r}, not "
                            f"{mine.get(key)!r}; tune with the same settings, or use another --storage")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class StudyOwner:
    """The one process that writes a study: ask, report / should_prune, tell, heartbeats.

    The driver calls it directly (in-process) or through a Ray actor; trials call `report`.
    `driver` is (host, pid) of the driver process, stamped on its running trials.
    """

    def __init__(self, search: Search, url: str, driver: tuple[str, int]) -> None:
        self.search, self.driver = search, driver
        self.storage = open_storage(url)
        self.study = open_study(search, self.storage, url)
        self.running: dict[int, optuna.Trial] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._beat, daemon=True, name="heartbeat").start()

    # -- the driver's calls

    def ask(self) -> tuple[int, dict[str, Any] | None, str | None]:
        """A new trial: (number, TrialConfig as a dict, None), or (number, None, error) if invalid."""
        trial = self.study.ask(self.search.space)
        try:
            config = self.search.trial_config(trial.params)
        except UserError as err:
            trial.set_user_attr("error", str(err))
            self.study.tell(trial, state=TrialState.FAIL)
            return trial.number, None, str(err)
        trial.set_user_attr("trial_id", config.trial_id)
        trial.set_user_attr("params", self.search.realized(config))
        self.running[trial.number] = trial
        self._stamp(trial)
        return trial.number, config.to_dict(), None

    def tell(self, number: int, outcome: dict[str, Any]) -> dict[str, Any]:
        """Record how a trial ended: complete (with its objective value), pruned or failed."""
        trial = self.running.pop(number)
        for key in OUTCOME_ATTRS:
            value = outcome.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                trial.set_user_attr(key, value)
        state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
        value = outcome["value"] if outcome["state"] == "complete" else None
        self.study.tell(trial, value, state=state[outcome["state"]])
        return self.tally()

    def abandon(self, numbers: list[int], reason: str) -> None:
        """Fail trials this driver will not finish (Ctrl+C, an error) and queue each once more."""
        for number in numbers:
            trial = self.running.pop(number, None)
            if trial is not None:
                frozen = self.storage.get_trial(trial._trial_id)
                trial.set_user_attr("error", reason)
                self.study.tell(trial, state=TrialState.FAIL)
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(self.study, frozen)

    def fail_stale(self) -> list[int]:
        """Mark RUNNING trials whose driver is gone as FAIL and queue each once more."""
        now, failed = time.time(), []
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number in self.running or not self._is_stale(trial, now):
                continue
            try:
                self.storage.set_trial_user_attr(trial._trial_id, "error", "lost: its driver stopped (no heartbeat)")
                if not self.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another driver got there first
            with warnings.catch_warnings():  # "experimental since v2.8.0": the one documented way to requeue
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(self.study, trial)
            failed.append(trial.number)
        return failed

    def tally(self) -> dict[str, Any]:
        """Trial counts by state and the best complete trial."""
        trials = self.study.get_trials(deepcopy=False)
        counts = Counter(t.state.name.lower() for t in trials)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value, default=None)
        return {**{s: counts.get(s, 0) for s in ("complete", "pruned", "fail", "running", "waiting")},
                "best_value": best.value if best else None, "best_number": best.number if best else None,
                "best_params": best.user_attrs.get("params", best.params) if best else None}

    def close(self) -> None:
        self._stop.set()

    # -- the trials' call

    def report(self, number: int, step: int, value: float) -> bool:
        """A trial's validation accuracy after epoch `step`; True means: stop, it is pruned."""
        trial = self.running.get(number)
        if trial is None:
            return True  # abandoned meanwhile
        trial.report(value, step)
        return trial.should_prune()

    # -- heartbeats

    def _stamp(self, trial: optuna.Trial) -> None:
        host, pid = self.driver
        stamp = {"host": host, "pid": pid, "time": time.time(), "every": self.search.heartbeat}
        try:
            self.storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, stamp)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # it ended meanwhile

    def _beat(self) -> None:
        while not self._stop.wait(self.search.heartbeat):
            for trial in list(self.running.values()):
                try:
                    self._stamp(trial)
                except Exception:  # noqa: BLE001 - a busy database: the next beat tries again
                    pass

    def _is_stale(self, trial: optuna.trial.FrozenTrial, now: float) -> bool:
        stamp = trial.system_attrs.get(HEARTBEAT_ATTR)
        if stamp is None:  # its driver stopped between ask and the first stamp
            started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
            return now - started > STALE_BEATS * self.search.heartbeat
        host, pid = self.driver
        if stamp["host"] == host and (stamp["pid"] == pid or not _pid_alive(stamp["pid"])):
            return True  # a driver on this machine that has ended (not in our `running`)
        return now - stamp["time"] > STALE_BEATS * stamp.get("every", self.search.heartbeat)


# ---------------------------------------------------------------------------------------------
# One trial, in a Ray task or in this process


def run_one(config: dict[str, Any], number: int, report: Callable[[int, int, float], bool],
            objective: str) -> dict[str, Any]:
    """Train on the 80% part, report each validation accuracy, stop when `report` says prune."""
    from drainage_bench.trainer.loop import run_trial

    trial = TrialConfig.from_dict(config)
    epochs = [0]

    def on_epoch(metrics: dict[str, Any]) -> None:
        epochs.append(metrics["epoch"])
        if not math.isnan(metrics["val_acc"]) and report(number, metrics["epoch"], metrics["val_acc"]):
            raise optuna.TrialPruned(f"pruned after epoch {metrics['epoch']}")

    start = time.perf_counter()
    try:
        result = run_trial(trial, on_epoch, evaluate_test=False)
    except optuna.TrialPruned:
        return {"state": "pruned", "epochs_run": epochs[-1], "wall_seconds": time.perf_counter() - start}
    except UserError as err:
        return {"state": "failed", "error": str(err), "wall_seconds": time.perf_counter() - start}
    summary = result.summary
    value = summary.get(objective, math.nan)
    outcome = {k: summary.get(k) for k in ("best_val_acc", "final_val_acc", "best_val_epoch")}
    outcome.update(epochs_run=len(result.epochs), wall_seconds=result.wall_seconds)
    if result.status != "ok" or not math.isfinite(value):
        return {**outcome, "state": "failed", "error": result.error or f"{objective} is {value}"}
    return {**outcome, "state": "complete", "value": value}


class LocalPool:
    """Trials in this process, one at a time: no Ray (tests, debugging, a laptop)."""

    capacity = 1

    def __init__(self, owner: StudyOwner, objective: str) -> None:
        self.owner, self.objective, self.queue = owner, objective, []

    def submit(self, number: int, config: dict[str, Any]) -> None:
        self.queue.append((number, config))

    def wait(self, timeout: float) -> list[tuple[int, dict[str, Any]]]:
        number, config = self.queue.pop(0)
        return [(number, run_one(config, number, self.owner.report, self.objective))]

    def cancel(self) -> None:
        self.queue.clear()


def _ray_trial(config: dict[str, Any], number: int, owner, objective: str, resources) -> dict[str, Any]:
    """One trial in a Ray task (on a GPU, each task gets a fresh process: Ray's max_calls=1)."""
    import ray

    resources.enter_worker()
    return run_one(config, number, lambda *args: ray.get(owner.report.remote(*args)), objective)


class RayPool:
    """Trials as Ray tasks with the sweep's resources; as many at once as the cluster fits."""

    def __init__(self, owner, resources, objective: str) -> None:
        import ray

        total = ray.cluster_resources()
        slots = int(total.get("CPU", 0) / resources.cpus_per_trial + 1e-9)  # 1 / 0.1 is 10 slots, not 9
        if resources.gpus_per_trial > 0:
            slots = min(slots, int(total.get("GPU", 0) / resources.gpus_per_trial + 1e-9))
        if slots < 1:
            raise UserError(f"a trial needs {resources.cpus_per_trial:g} CPU and {resources.gpus_per_trial:g} GPU "
                            f"but Ray has {total.get('CPU', 0):g} CPU and {total.get('GPU', 0):g} GPU; "
                            "lower --cpus-per-trial / --gpus-per-trial")
        self.capacity = min(slots, resources.max_concurrent or slots)
        self.owner, self.objective = owner, objective
        self.resources = resources
        self.task = ray.remote(_ray_trial).options(num_cpus=resources.cpus_per_trial,
                                                   num_gpus=resources.gpus_per_trial, max_retries=0)
        self.refs: dict[Any, int] = {}

    def submit(self, number: int, config: dict[str, Any]) -> None:
        from drainage_bench.sweeps.tune_runner import for_worker

        worker_config = for_worker(TrialConfig.from_dict(config), self.resources)
        ref = self.task.remote(worker_config, number, self.owner, self.objective, self.resources)
        self.refs[ref] = number

    def wait(self, timeout: float) -> list[tuple[int, dict[str, Any]]]:
        import ray

        done, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        out = []
        for ref in done:
            number = self.refs.pop(ref)
            try:
                out.append((number, ray.get(ref)))
            except ray.exceptions.RayError as err:  # the worker died (out of memory, killed)
                first = str(err).strip().splitlines()[0]
                out.append((number, {"state": "failed", "error": f"the Ray worker failed: {first}"}))
        return out

    def cancel(self) -> None:
        import ray

        for ref in self.refs:
            ray.cancel(ref, force=True)


class _RemoteOwner:
    """A StudyOwner actor whose methods answer like the local object's (ray.get on each call)."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def __getattr__(self, name: str):
        import ray

        method = getattr(self.handle, name)
        return lambda *args: ray.get(method.remote(*args))


# ---------------------------------------------------------------------------------------------
# The driver


def run_search(search: Search, storage: str, *, resources=None, address: str | None = None,
               emit: Callable[[str], None] = print) -> dict[str, Any]:
    """Run trials until the study holds ``search.trials`` complete ones; return its tally.

    ``resources`` (a `tune_runner.Resources`) runs trials as Ray tasks; None runs them one by
    one in this process. `storage` is a URL or journal path (see `resolve_storage`).
    """
    url = resolve_storage(storage)
    driver = (socket.gethostname(), os.getpid())
    # Create or check the study here first, so that a bad setting is a plain one-line error.
    open_study(search, open_storage(url), url)
    if resources is None:
        owner = StudyOwner(search, url, driver)
        pool = LocalPool(owner, search.objective)
        handle = None
    else:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from drainage_bench.sweeps.tune_runner import start_ray

        start_ray(address)
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        handle = ray.remote(StudyOwner).options(num_cpus=0, scheduling_strategy=here).remote(search, url, driver)
        owner = _RemoteOwner(handle)
        pool = RayPool(handle, resources, search.objective)
    try:
        return _drive(search, owner, pool, emit)
    finally:
        owner.close()
        if handle is not None:
            import ray

            ray.kill(handle)


def _drive(search: Search, owner, pool, emit: Callable[[str], None]) -> dict[str, Any]:
    for number in owner.fail_stale():
        emit(f"#{number} was left RUNNING by a stopped search: marked FAIL, its parameters queued again")
    tally = owner.tally()
    emit(f"study {search.name}: {tally['complete']} complete, {tally['pruned']} pruned, "
         f"{tally['fail']} failed; running until {search.trials} complete ({pool.capacity} at a time)")
    running: dict[int, dict[str, Any]] = {}
    failures, next_check = 0, time.monotonic() + search.heartbeat
    try:
        while True:
            while tally["complete"] + len(running) < search.trials and len(running) < pool.capacity:
                number, config, error = owner.ask()
                if config is None:
                    failures = _failed(failures, f"#{number} failed: {error}", emit)
                    tally = owner.tally()
                    continue
                pool.submit(number, config)
                running[number] = config
            if not running:
                return tally
            for number, outcome in pool.wait(search.heartbeat):
                config = running.pop(number)
                tally = owner.tell(number, outcome)
                line = _trial_line(number, config, outcome, search, tally)
                if outcome["state"] == "failed":
                    failures = _failed(failures, line, emit)
                else:
                    failures = 0
                    emit(line)
            if time.monotonic() >= next_check:
                for number in owner.fail_stale():
                    emit(f"#{number}: its search stopped (no heartbeat): marked FAIL, parameters queued again")
                tally, next_check = owner.tally(), time.monotonic() + search.heartbeat
    except BaseException:
        pool.cancel()
        owner.abandon(sorted(running), "interrupted: the search stopped before this trial ended")
        raise


def _failed(failures: int, line: str, emit: Callable[[str], None]) -> int:
    emit(line)
    if failures + 1 >= MAX_FAILURES_IN_A_ROW:
        raise UserError(f"{failures + 1} trials in a row failed (last: {line}); check the data, the recipe "
                        "and the search space (--space)")
    return failures + 1


def _trial_line(number: int, config: dict[str, Any], outcome: dict[str, Any], search: Search,
                tally: dict[str, Any]) -> str:
    values = {**config, **config["loss_params"]}
    params = " ".join(f"{k}={values[k]:.4g}" if isinstance(values[k], float) else f"{k}={values[k]}"
                      for k in search.space)
    state = outcome["state"]
    if state == "complete":
        result = f"val {100 * outcome['value']:.2f}%"
    elif state == "pruned":
        result = f"after epoch {outcome['epochs_run']}"
    else:
        result = outcome.get("error", "")[:120]
    best = "—" if tally["best_value"] is None else f"{100 * tally['best_value']:.2f}% (#{tally['best_number']})"
    return (f"#{number} {state} {result}  {params}  ({outcome.get('wall_seconds', 0):.0f}s) | "
            f"{tally['complete']}/{search.trials} complete, {tally['pruned']} pruned, {tally['fail']} failed | "
            f"best {best}")


# ---------------------------------------------------------------------------------------------
# Tuned parameters for sweeps


def tuned_lookup(storage: str) -> Callable[[TrialConfig], tuple[dict[str, Any], str]]:
    """``tuned_params`` over one storage, each study read once (a spec has a config per seed)."""
    found: dict[str, tuple[dict[str, Any], str]] = {}

    def lookup(config: TrialConfig) -> tuple[dict[str, Any], str]:
        name = study_name(config)
        if name not in found:
            found[name] = tuned_params(config, storage)
        return found[name]

    return lookup


def tuned_params(config: TrialConfig, storage: str | None = None) -> tuple[dict[str, Any], str]:
    """The best complete trial of the study matching `config` (dataset, loss, noise).

    Returns (parameters, ``"optuna:<study>#<trial number>"``). The parameters are every loss
    parameter of that trial, plus the trial fields its space searched (ANL's ``l1_delta``).
    """
    url = resolve_storage(storage)
    name = study_name(config)
    command = tune_command(config, storage)
    if not storage_exists(url):
        raise UserError(f"no Optuna storage at {url} (parameters for {name} are tuned there): run `{command}`")
    store = open_storage(url)
    if name not in optuna.study.get_all_study_names(store):
        raise UserError(f"no Optuna study {name!r} in {url}: run `{command}` first")
    study = optuna.load_study(study_name=name, storage=store)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError(f"Optuna study {name!r} has no complete trial yet: run `{command}`")
    best = max(complete, key=lambda t: t.value)
    return dict(best.user_attrs.get("params", best.params)), f"optuna:{name}#{best.number}"

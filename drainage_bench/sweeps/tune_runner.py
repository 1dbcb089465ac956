"""Run the missing trials of a sweep on Ray Tune, every trial through the shared trainer.

The results store is the source of truth, not Tune's experiment state: before each run the sweep
is expanded into TrialConfigs, the trial_ids that already have a record are dropped, and only the
rest go to a fresh Tune experiment (a plain grid). A trial writes its own record, atomically, the
moment it ends, so whatever kills the driver (Ctrl+C, SIGKILL, a crashed node) the next run picks
up exactly the trials without a record. (Tune's own restore re-runs trials that finished after its
last snapshot when the driver is killed, so it is not used for resuming.)

Failures: the trainer records a NaN loss or an exception as a failed trial; a worker killed for
memory is recorded as failed by the driver's callback; a worker lost otherwise (its node crashed,
its process was killed) leaves no record, so the next run trains that trial again. Failed trials
are skipped on the next run unless ``retry_failed``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from drainage_bench.analysis.store import ResultsStore
from drainage_bench.config import TrialConfig
from drainage_bench.errors import UserError


@dataclass
class Plan:
    """What a run of the sweep will do."""

    configs: list[TrialConfig]        # every trial of the sweep
    todo: list[TrialConfig]           # without a record (or failed, with retry_failed)
    done: dict[str, str]              # trial_id -> status, of those in the sweep


def plan(configs: list[TrialConfig], store: ResultsStore, retry_failed: bool = False) -> Plan:
    statuses = store.statuses()
    by_id: dict[str, TrialConfig] = {}
    for c in configs:  # the same experiment twice in a spec runs once (the first one's label)
        by_id.setdefault(c.trial_id, c)
    unique = list(by_id.values())
    done = {c.trial_id: statuses[c.trial_id] for c in unique if c.trial_id in statuses}
    todo = [c for c in unique if c.trial_id not in done or (retry_failed and done[c.trial_id] != "ok")]
    return Plan(configs=unique, todo=todo, done=done)


GPU_MEMORY_HEADROOM = 0.95


@dataclass
class Resources:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None

    def enter_worker(self) -> None:
        """In the Ray worker, before a trial: torch uses the trial's CPUs (the thread policy of
        every entry point, provenance.use_cpu_share), and with a fraction of a GPU the process may
        allocate that fraction of its memory (95% of it, leaving room for the CUDA contexts):
        whether a trial runs out of memory is then a property of the trial, not of the trials it
        happened to share the GPU with."""
        import torch

        from drainage_bench.trainer.provenance import use_cpu_share

        use_cpu_share(self.cpus_per_trial)
        if 0 < self.gpus_per_trial < 1 and torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(self.gpus_per_trial * GPU_MEMORY_HEADROOM)


def check_resources(res: Resources, address: str | None, gpu_explicit: bool,
                    configs: list[TrialConfig] = ()) -> Resources:
    """Validate before Ray starts; a spec's GPU share is dropped (with a note) where there is no GPU.

    ``device=cuda`` in a config needs a GPU share: without one, the trial would use a GPU that Ray
    does not know is taken.
    """
    from drainage_bench.trainer.provenance import threads_for

    threads_for(res.cpus_per_trial)  # refuses a share <= 0
    if not 0 <= res.gpus_per_trial <= 1:
        raise UserError(f"--gpus-per-trial={res.gpus_per_trial:g} must be between 0 and 1: a trial uses one GPU "
                        "(0.25 packs four trials on a GPU)")
    if res.max_concurrent is not None and res.max_concurrent < 1:
        raise UserError(f"--max-concurrent={res.max_concurrent} must be >= 1")
    if res.gpus_per_trial > 0 and not address:
        import torch

        if not torch.cuda.is_available():
            if gpu_explicit:
                raise UserError(f"--gpus-per-trial {res.gpus_per_trial:g} was given but this machine has no "
                                "CUDA GPU; drop the option (trials run on the CPU) or use --address for a cluster")
            res = Resources(res.cpus_per_trial, 0.0, res.max_concurrent)
    if res.gpus_per_trial == 0 and any(c.device == "cuda" for c in configs):
        raise UserError("device=cuda needs a GPU share per trial: add --gpus-per-trial (1, or 0.25 to pack "
                        "four trials on a GPU), or drop device=cuda")
    return res


def start_ray(address: str | None) -> None:
    """Join the cluster at `address`, or start a Ray instance of our own on this machine (once per
    process). Without an address Ray would join the cluster named in /tmp/ray/ray_current_cluster,
    and wait forever if that one has died; ``--address auto`` joins a running one on purpose."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        with _quiet_stderr(enabled=bool(address)):
            ray.init(address=address or "local", include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False)
    except (ConnectionError, ray.exceptions.AuthenticationError) as err:
        raise UserError(f"could not join the Ray cluster at {address} ({err}): check --address or RAY_ADDRESS; "
                        "a cluster with token authentication (Ray >= 2.59 starts local ones with it) also needs "
                        "RAY_AUTH_MODE=token and its token (`ray get-auth-token`) here") from None


def check_fits(res: Resources, address: str | None = None) -> None:
    """After `start_ray`: a trial needs its whole CPU and GPU share on one node, and a share
    larger than every node has would wait forever (Tune keeps it pending, printing nothing). On
    our own Ray instance (no `address`) that is refused in one line; on a cluster, whose
    autoscaler may still add such a node, it is a warning."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    for kind, want, option in (("CPU", res.cpus_per_trial, "--cpus-per-trial"),
                               ("GPU", res.gpus_per_trial, "--gpus-per-trial")):
        most = max((node.get(kind, 0.0) for node in nodes), default=0.0)
        if want > 0 and want > most:
            if address:
                print(f"warning: {option}={want:g} is more than any node of the cluster has now ({most:g} {kind}s "
                      "at most): trials wait until such a node joins", file=sys.stderr)
                continue
            raise UserError(f"{option}={want:g} is more than this machine has ({most:g} {kind}s for Ray): "
                            f"no trial could start; give {option} {most:g} or less (a spec sets it in [resources])")


@contextlib.contextmanager
def _quiet_stderr(enabled: bool):
    """Silence file descriptor 2 while joining a cluster: Ray's C++ client prints a warning for
    each failed attempt, which would bury the one-line error."""
    if not enabled:
        yield
        return
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)




def for_worker(config: TrialConfig, resources: Resources) -> dict[str, Any]:
    """The config as a Ray worker gets it: its device, and the data root as an absolute path
    (Tune runs each trial in a folder of its own, where a relative path means something else).

    ``device=auto`` becomes ``cuda`` when the trial holds a GPU share, else ``cpu``; an explicit
    device stays (``cpu`` with a GPU share uses the share only to limit how many run at once).
    """
    from drainage_bench.trainer.data import resolve_data_root

    device = config.device
    if device == "auto":
        device = "cuda" if resources.gpus_per_trial > 0 else "cpu"
    root = str(resolve_data_root(config.data_root).absolute())
    return config.replace(device=device, data_root=root).to_dict()


# ---------------------------------------------------------------------------------------------
# The trial, as Tune runs it (in a worker process)


def tune_trainable(params: dict[str, Any]) -> None:
    """Ray Tune function trainable: one trial, reported per epoch, recorded in the store."""
    from ray import tune

    from drainage_bench.trainer.loop import run_trial

    config = TrialConfig.from_dict(params["case"]["trial"])
    store = ResultsStore(params["results_root"], params["sweep"])
    resources = Resources(**params["resources"])
    if store.trial_path(config.trial_id).exists() and not params.get("retry_failed"):
        return  # finished by an earlier, interrupted run of the driver
    resources.enter_worker()
    try:
        result = run_trial(config, on_epoch=lambda m: tune.report({**m, "trial_id": config.trial_id}))
    except Exception as err:  # noqa: BLE001 - e.g. bad data on this node: record it, go on
        write_failed(store, config, f"{type(err).__name__}: {err}")
        return
    record = {**result.record(), "sweep": params["sweep"],
              "cpus_per_trial": resources.cpus_per_trial, "gpus_per_trial": resources.gpus_per_trial}
    store.write_trial(record, result.epochs, result.samples, result.noise, openset=result.openset,
                      corruptions=result.corruptions)
    if result.broken_cuda:
        # A sticky CUDA error: this (reused) actor would fail every later trial. End the process;
        # the trial has its record, and Tune starts a fresh actor for the next one.
        os._exit(1)


def write_failed(store: ResultsStore, config: TrialConfig, error: str) -> None:
    from drainage_bench.trainer.loop import TrialResult

    result = TrialResult(config=config, status="failed", epochs=[], realized_noise_rate=math.nan,
                         wall_seconds=0.0, error=error)
    store.write_trial({**result.record(), "sweep": store.sweep}, [])


# ---------------------------------------------------------------------------------------------
# Progress, on the driver


@dataclass
class Progress:
    """Counts and the best result so far per loss, printed as trials end.

    `metric` is a table metric name (``final_test_acc``, ``drainage_clean``, ...); "best" follows
    its direction (the lowest drainage share of clean samples is the best one).
    """

    plan: Plan
    store: ResultsStore
    metric: str
    emit: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)
    finished: int = 0
    failed: int = 0
    lost: int = 0
    running: int = 0
    best: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from drainage_bench.catalog import get_metric

        m = get_metric(self.metric)
        self.column, self.sign = m.column, (1.0 if m.higher_is_better else -1.0)
        ids = [c.trial_id for c in self.plan.configs]
        trials = self.store.trials(ids)
        if not trials.empty and self.column in trials:
            for _, row in trials[trials["status"] == "ok"].iterrows():
                self._offer(row["loss_display"], row[self.column])

    def _offer(self, label: str, value: float) -> None:
        if not math.isnan(value) and self.sign * value > self.sign * self.best.get(label, -self.sign * math.inf):
            self.best[label] = value

    def trial_ended(self, trial_id: str) -> None:
        record = self.store.trials([trial_id])
        self.finished += 1
        if record.empty or record.iloc[0]["status"] != "ok":
            self.failed += 1
            error = "no record" if record.empty else str(record.iloc[0]["error"])[:300]
            self.emit(f"[red]failed[/] {trial_id}: {error}")
        else:
            row = record.iloc[0]
            value = row.get(self.column, math.nan)
            self._offer(row["loss_display"], value)
            self.emit(f"done {trial_id}: {self.metric} {100 * value:.2f}% ({row['wall_seconds']:.0f}s)")
        self.emit(self.line())

    def trial_lost(self, trial_id: str, error: str) -> None:
        """A trial whose worker vanished (a lost node): no record, so the next run retries it."""
        self.finished += 1
        self.lost += 1
        self.emit(f"[yellow]lost[/] {trial_id} (runs again next time): {error or 'the worker died'}")
        self.emit(self.line())

    def line(self) -> str:
        total = len(self.plan.todo)
        pending = max(0, total - self.finished - self.running)
        elapsed = time.monotonic() - self.started
        eta = "?" if not self.finished else _hms(elapsed / self.finished * (total - self.finished))
        ranked = sorted(self.best.items(), key=lambda kv: -self.sign * kv[1])
        best = "  ".join(f"{k} {100 * v:.1f}" for k, v in ranked)
        lost = f", {self.lost} lost" if self.lost else ""
        return (f"[bold]{self.finished}/{total}[/] done ({self.failed} failed{lost}), {self.running} running, "
                f"{pending} pending | {_hms(elapsed)} elapsed, ~{eta} left | best {self.metric}: {best or '—'}")


def _error_text(trial) -> str:
    """The error text Tune kept for a trial ('' if none)."""
    try:
        return str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - missing or unreadable error file
        return ""


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _progress_callback(progress: Progress):
    from ray import tune

    class ProgressCallback(tune.Callback):
        """Feeds trial starts and ends to `progress` (on the driver)."""

        def __init__(self, progress: Progress) -> None:
            self.progress = progress

        # Tune pickles its run config for its own restore, which this runner does not use; the
        # progress (a console, a lock) stays on the driver.
        def __getstate__(self):
            return {"progress": None}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.progress.running += 1

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.progress.running -= 1
            self.progress.trial_ended(trial.config["case"]["trial_id"])

        def on_trial_error(self, iteration, trials, trial, **info):
            # The trainable records every error itself, so Tune sees one only when the worker
            # process died: killed for memory (a property of the trial: recorded as failed), or
            # its node lost (not the trial's fault: no record, it runs again next time).
            self.progress.running -= 1
            config = TrialConfig.from_dict(trial.config["case"]["trial"])
            error = _error_text(trial)
            last = error.strip().splitlines()[-1][:300] if error.strip() else ""
            if self.progress.store.trial_path(config.trial_id).exists():
                self.progress.trial_ended(config.trial_id)
            elif "OutOfMemoryError" in error:
                write_failed(self.progress.store, config, f"the Ray worker was killed for memory: {last}")
                self.progress.trial_ended(config.trial_id)
            else:
                self.progress.trial_lost(config.trial_id, last)

    return ProgressCallback(progress)


# ---------------------------------------------------------------------------------------------
# The driver


def run_trials(todo: list[TrialConfig], store: ResultsStore, resources: Resources, *, progress: Progress,
               address: str | None = None, retry_failed: bool = False, reuse_actors: bool = True) -> None:
    """Run `todo` as one Tune experiment under ``<store>/ray/``."""
    import ray
    from ray import tune

    if not todo:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    start_ray(address)
    root = str(store.root.resolve())
    trainable = tune.with_resources(tune_trainable, {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})
    grid = [{"trial": for_worker(c, resources), "trial_id": c.trial_id} for c in todo]
    param_space = {
        "case": tune.grid_search(grid),
        "results_root": root, "sweep": store.sweep, "retry_failed": retry_failed,
        "resources": dataclasses.asdict(resources),
    }

    def name(trial) -> str:
        return trial.config["case"]["trial_id"]

    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=resources.max_concurrent, reuse_actors=reuse_actors,
                                    trial_name_creator=name, trial_dirname_creator=name),
        run_config=tune.RunConfig(
            name=time.strftime("run-%Y%m%d-%H%M%S"), storage_path=str(store.path.resolve() / "ray"),
            verbose=0, callbacks=[_progress_callback(progress)],
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    tuner.fit()

"""Inspecting Optuna studies: ``drainage-bench study list | show NAME | plot NAME``.

Reads any storage `drainage_bench.sweeps.search` writes (SQLite, a server database, a journal
file) without changing it. Figures are Optuna's matplotlib visualisations saved as PNG files.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from drainage_bench.errors import UserError, did_you_mean
from drainage_bench.sweeps.search import open_storage, storage_exists

STATES = ("complete", "pruned", "fail", "running")


@dataclass(frozen=True)
class StudyRow:
    """One line of ``study list``."""

    name: str
    counts: dict[str, int]
    best_value: float | None
    best_number: int | None
    best_params: dict[str, Any]


def _storage(url: str) -> optuna.storages.BaseStorage:
    if not storage_exists(url):
        raise UserError(f"no Optuna storage at {url}: run `drainage-bench tune` first, or give --storage")
    return open_storage(url)


def list_studies(url: str) -> list[StudyRow]:
    """Every study in the storage with its trial counts by state and its best complete trial."""
    storage = _storage(url)
    rows = []
    for name in sorted(optuna.study.get_all_study_names(storage)):
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        best = _best(trials)
        rows.append(StudyRow(
            name=name, counts={s: sum(t.state.name.lower() == s for t in trials) for s in STATES},
            best_value=best.value if best else None, best_number=best.number if best else None,
            best_params=dict(best.params) if best else {}))
    return rows


def load(url: str, name: str) -> optuna.Study:
    """A study by name; an unknown name lists the studies there."""
    storage = _storage(url)
    names = optuna.study.get_all_study_names(storage)
    if name not in names:
        raise UserError(f"no study {name!r} in {url}; " + did_you_mean(name, names or ["(none)"]))
    return optuna.load_study(study_name=name, storage=storage)


def _best(trials: list[FrozenTrial]) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return max(complete, key=lambda t: t.value, default=None)


def best_trials(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The `top` complete trials, best first (the earlier trial first on a tie)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: (-t.value, t.number))[:top]


def recipe_trial(study: optuna.Study) -> FrozenTrial | None:
    """The trial that ran the recipe's values (queued first when the study was made), if complete."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get("recipe_defaults"):
            return trial
    return None


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """fANOVA importances of the searched parameters (seeded), or ({}, why there are none)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = {n for n in {k for t in complete for k in t.params}
              if len({t.params.get(n) for t in complete}) > 1}
    if len(complete) < 2 or not varied:
        return {}, "importances need at least 2 complete trials with different parameters"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        return optuna.importance.get_param_importances(study, evaluator=evaluator), None
    except (RuntimeError, ValueError) as err:
        return {}, f"importances could not be computed: {err}"


def dashboard_command(url: str) -> str:
    """How to open the storage in optuna-dashboard (a separate ``pip install optuna-dashboard``)."""
    return f"optuna-dashboard {url}"


def plot_study(study: optuna.Study, out: Path) -> list[Path]:
    """PNG files in `out`, one per figure of :func:`study_figures`."""
    import matplotlib.pyplot as plt

    figures = study_figures(study)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures.items():
        path = out / f"{name}.png"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def study_figures(study: optuna.Study) -> dict:
    """name -> matplotlib Figure: optimisation history, the landscape of the two most important
    parameters (contour, the trials as points), one slice per parameter, and the learning curves
    (validation accuracy per epoch, where pruned trials stop)."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError(f"study {study.study_name!r} has no complete trial to plot yet")
    names = _by_importance(study)
    draws = {"history": lambda: vis.plot_optimization_history(study, target_name="validation accuracy"),
             "slices": lambda: vis.plot_slice(study, target_name="validation accuracy"),
             "learning_curves": lambda: _learning_curves(vis.plot_intermediate_values(study))}
    if len(names) >= 2:
        draws["landscape"] = lambda: vis.plot_contour(study, params=names[:2], target_name="validation accuracy")
    figures = {}
    for name, draw in draws.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = draw()
        figures[name] = _figure(axes)
        figures[name].suptitle(study.study_name)
    return figures


def _by_importance(study: optuna.Study) -> list[str]:
    """The searched names, the most important first (space order without importances)."""
    names = list(dict.fromkeys(k for t in study.get_trials(deepcopy=False) for k in t.params))
    scores, _ = importances(study)
    return sorted(names, key=lambda n: -scores.get(n, 0.0))  # stable: space order on ties


def _learning_curves(axes):
    """Axis names; no legend beyond 10 trials (it would squeeze the plot to nothing)."""
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    legend = axes.get_legend()
    if legend is not None and len(legend.get_texts()) > 10:
        legend.remove()
    return axes


def _figure(axes):
    import numpy as np

    first = axes.flat[0] if isinstance(axes, np.ndarray) else axes
    return first.figure

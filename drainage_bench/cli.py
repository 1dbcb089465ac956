"""The console script `drainage-bench`: one thin function per subcommand.

Bad input raises UserError anywhere below; `main` prints its one line and exits with status 2.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from drainage_bench.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run, resume and report benchmark sweeps of robust losses under label noise.")
# Wide output when piped (logs, CI); the terminal's own width otherwise.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 400)

DataRoot = Annotated[Optional[str], typer.Option("--data-root", help="Data folder (else $DRAINAGE_BENCH_DATA, else ./data).")]
ResultsRoot = Annotated[Path, typer.Option("--results", help="Results root folder.")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Fetch the dataset into the data root if it is missing (the only time anything is downloaded).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a trial field or loss parameter: key=value (repeatable).")]
StorageOpt = Annotated[Optional[str], typer.Option(help="Optuna storage: sqlite:///FILE.db, postgresql://..., mysql://..., or a journal file path (default: sqlite:///RESULTS/optuna.db).")]
# Resources of Ray trials (sweep and tune).
CpusOpt = Annotated[Optional[float], typer.Option(help="CPUs per trial (default: the spec's, else 1).")]
GpusOpt = Annotated[Optional[float], typer.Option(help="GPU share per trial; 0.25 packs four trials on a GPU.")]
MaxConcurrentOpt = Annotated[Optional[int], typer.Option(help="At most this many trials at once.")]
AddressOpt = Annotated[Optional[str], typer.Option(envvar="RAY_ADDRESS", show_envvar=False, help="Join an existing Ray cluster (else $RAY_ADDRESS, else start one here).")]


# Typer >= 0.26 parses with its own copy of click, whose exceptions are not click's.
CLICK_ERRORS = (click.exceptions.ClickException, getattr(typer, "TyperException", click.exceptions.ClickException))


def _error_line(message: str) -> None:
    """``error: MESSAGE`` on stderr, the message as it is (no markup: spec messages show [[losses]])."""
    err_console.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except UserError as err:
        _error_line(str(err))
        sys.exit(2)
    except CLICK_ERRORS as err:  # a usage error: one line, with the command's --help
        ctx = getattr(err, "ctx", None)
        if ctx is None or type(err).__name__ == "NoArgsIsHelpError":
            if err.format_message().strip():  # typer may have printed the help itself
                err.show()
        else:
            _error_line(f"{err.format_message().rstrip('.')}; see `{ctx.command_path} --help`")
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _more_evals(m: dict) -> str:
    """The epoch's other evaluations (validation, ILSVRC2012), when it has them."""
    return "".join(f"  {name} {_pct(m[f'{name}_acc'])}%" for name in ("val", "imagenet")
                   if not math.isnan(m.get(f"{name}_acc", math.nan)))


def _pct(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _writable(folder: Path, option: str = "--results", given: Path | None = None) -> Path:
    """`folder`, checked before anything runs: it (or the nearest folder above it that exists) is
    a folder this process may write in. `given`: what the user named, when `folder` holds it."""
    there = folder
    while not there.exists() and there != there.parent:
        there = there.parent
    named = f"{option} {given or folder}" + ("" if there == (given or folder) else f": {there}")
    if not there.is_dir():
        raise UserError(f"{named} is a file, not a folder; name another folder")
    if not os.access(there, os.W_OK | os.X_OK):
        raise UserError(f"{named} is not writable; name a folder you may write in")
    return folder


# ---------------------------------------------------------------------------------------------
# Reference listings


@app.command()
def losses() -> None:
    """List every loss with its parameters and defaults."""
    from drainage_bench.trainer.losses import LOSSES, display_name, loss_defaults

    table = Table("name", "display", "parameters (defaults)", "paper", box=None)
    for name, cls in LOSSES.items():
        params = ", ".join(f"{k}={cls.derived.get(k, v) if v is None else v}"
                           for k, v in loss_defaults(name).items()) or "—"
        table.add_row(name, display_name(name), params, getattr(cls, "paper", ""))
    console.print(table)


@app.command()
def datasets(data_root: DataRoot = None) -> None:
    """List datasets and whether their files are found under the data root."""
    from drainage_bench.trainer.data import DATASETS, dataset_status, resolve_data_root

    root = resolve_data_root(data_root)
    console.print(f"data root: {root}")
    table = Table("name", "classes", "found", "detail", box=None)
    for name, info in DATASETS.items():
        found, detail = dataset_status(name, root)
        table.add_row(name, str(info.num_classes), "[green]yes[/]" if found else "[red]no[/]", detail)
    console.print(table)


# ---------------------------------------------------------------------------------------------
# One trial


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="Dataset name (see `drainage-bench datasets`).")] = "digits",
    loss: Annotated[str, typer.Option(help="Loss name (see `drainage-bench losses`).")] = "ce",
    noise: Annotated[str, typer.Option(help="none | sym:R | asym:R | instance:R | human[:KEY] | file:PATH (a label file)")] = "none",
    seed: Annotated[int, typer.Option(help="Seed of the noise, the initialisation and the data order.")] = 0,
    epochs: Annotated[Optional[int], typer.Option(help="Override the recipe's number of epochs.")] = None,
    set_: SetOpt = None,
    data_root: DataRoot = None,
    download: DownloadOpt = False,
    results: ResultsRoot = Path("results"),
    name: Annotated[str, typer.Option(help="Results subfolder for single trials.")] = "train",
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs of the trial: torch uses this many threads, as a sweep's trial does (same default: 1).")] = 1.0,
) -> None:
    """Train one trial and write its records to RESULTS/NAME/."""
    from drainage_bench.config import build_config, parse_set
    from drainage_bench.trainer.noise import check_label_files, noise_fields

    from drainage_bench.trainer.provenance import threads_for

    threads_for(cpus_per_trial)  # a share <= 0 stops here, before anything runs
    _writable(results / name, "--results", results)
    overrides = {**noise_fields(noise), "seed": seed, **parse_set(set_)}
    if epochs is not None:
        overrides["epochs"] = epochs
    if data_root is not None:
        overrides["data_root"] = data_root
    config = build_config(dataset, loss, overrides)
    _load(dataset, data_root, download)  # bad data fails here, before anything is shown or written
    check_label_files([config])
    _require_weights([config])
    _require_corruptions([config], data_root, None)
    console.print(f"trial {config.trial_id}: {config.dataset} {config.loss} {config.noise_tag} "
                  f"seed {config.seed}, {config.model}, {config.epochs} epochs, lr {config.lr:g}")

    def show(m: dict) -> None:
        drain = "" if math.isnan(m["drainage_share_noisy"]) else (
            f"  drained clean {_pct(m['drainage_share_clean'])}% mislabeled {_pct(m['drainage_share_noisy'])}%")
        console.print(f"epoch {m['epoch']:>3}/{config.epochs}  loss {m['train_loss']:.4f}  "
                      f"train(noisy) {_pct(m['train_acc_noisy'])}%  train(clean) {_pct(m['train_acc_clean'])}%  "
                      f"test {_pct(m['test_acc'])}%{_more_evals(m)}{drain}  {m['epoch_seconds']:.1f}s", highlight=False)

    from drainage_bench.analysis.store import ResultsStore
    from drainage_bench.trainer.loop import run_trial
    from drainage_bench.trainer.provenance import use_cpu_share

    use_cpu_share(cpus_per_trial)  # the thread policy of sweep and tune
    result = run_trial(config, on_epoch=show)
    record = {**result.record(), "cpus_per_trial": cpus_per_trial}
    ResultsStore(results, name).write_trial(record, result.epochs, result.samples, result.noise,
                                            openset=result.openset, corruptions=result.corruptions)
    s = result.summary
    line = (f"{result.status}: test {_pct(s.get('final_test_acc'))}% | noise {_pct(result.realized_noise_rate)}% "
            f"| {result.wall_seconds:.1f}s on {result.device} | {results / name / 'trials' / (config.trial_id + '.parquet')}")
    console.print(line if result.status == "ok" else f"[red]{line}[/]\n{result.error}", highlight=False)
    if result.status != "ok":
        raise typer.Exit(1)


@app.command()
def reproduce(
    sweep: Annotated[str, typer.Argument(help="The sweep's results folder under RESULTS (`train` for single trials).")],
    trial_id: Annotated[str, typer.Argument(help="The trial to run again (its record's trial_id).")],
    results: ResultsRoot = Path("results"),
    data_root: DataRoot = None,
) -> None:
    """Train a recorded trial again under its recorded conditions; compare every metric (exit 1 if any differs).

    Writes nothing: the stored record stays as it is."""
    from drainage_bench.reproduce import reproduce as rerun

    cmp = rerun(results, sweep, trial_id, data_root)
    console.print(f"{cmp.trial_id}: ran again on {cmp.device} with {cmp.threads} torch thread(s)", highlight=False)
    from rich.markup import escape

    for name, old, new in cmp.conditions:  # values are text, not markup (a torch error may hold brackets)
        console.print(f"[yellow]{name}[/]: recorded {escape(str(old))}, here {escape(str(new))} "
                      "(a difference may come from this)", highlight=False)
    table = Table("metric", "recorded", "new", "identical", box=None)
    for metric, old, new, same in cmp.rows:
        mark = "not recorded" if same is None else ("yes" if same else "[red]NO[/]")
        table.add_row(metric, "—" if old is None else escape(repr(old)), "—" if new is None else escape(repr(new)), mark)
    console.print(table)
    epochs = ("identical" if not cmp.epochs_differing else
              "[red]differ[/] at epoch(s) " + ", ".join(str(e) for e in cmp.epochs_differing if e > 0)
              + (" (a different number of epochs)" if -1 in cmp.epochs_differing else ""))
    console.print(f"per-epoch metrics: {epochs}", highlight=False)
    for kind, same in cmp.parts:  # per-sample records: drainage probabilities, open-set scores, corruption cells
        mark = "not recorded" if same is None else ("identical" if same else "[red]differ[/]")
        console.print(f"{kind}: {mark}", highlight=False)
    console.print("identical" if cmp.identical else "[red]the new run differs from the record[/]", highlight=False)
    if not cmp.identical:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------
# Sweeps


def _load(dataset: str, data_root: str | None, download: bool) -> None:
    """Load (and with `download`, fetch) a dataset; the trainer then finds it in the cache."""
    from drainage_bench.trainer.data import load_dataset, resolve_data_root

    load_dataset(dataset, resolve_data_root(data_root), download=download)


def _resources(defaults: dict, cpus: float | None, gpus: float | None, max_concurrent: int | None,
               address: str | None, configs: list):
    """Trial resources: the command line, else the spec's `defaults`; checked (with the devices
    the `configs` ask for) before Ray starts."""
    from drainage_bench.sweeps.tune_runner import Resources, check_resources

    def given(value, key, default):
        return value if value is not None else defaults.get(key, default)

    res = check_resources(Resources(
        cpus_per_trial=given(cpus, "cpus_per_trial", 1), gpus_per_trial=given(gpus, "gpus_per_trial", 0),
        max_concurrent=given(max_concurrent, "max_concurrent", None)), address, gpus is not None, configs)
    if gpus is None and defaults.get("gpus_per_trial") and not res.gpus_per_trial:
        console.print(f"[dim]no CUDA GPU here: the spec's {defaults['gpus_per_trial']:g} GPU per trial is "
                      "dropped and trials run on the CPU[/]")
    return res


def _require_dataset(dataset: str, data_root: str | None, address: str | None, download: bool = False) -> None:
    """On this machine (no cluster), the dataset must load before Ray starts: a missing or damaged
    file stops here, not in every trial. With `download`, what is missing is fetched first (here,
    also for a cluster whose nodes share the data root); the dataset is loaded once either way."""
    from drainage_bench.trainer.data import dataset_status, load_dataset, resolve_data_root

    root = resolve_data_root(data_root)
    if download:
        load_dataset(dataset, root, download=True)
    if address:
        return
    found, detail = dataset_status(dataset, root)
    if not found:
        raise UserError(f"dataset {dataset!r} is not available: {detail}")
    load_dataset(dataset, root, download)


def _require_weights(configs: list) -> None:
    """Every starting-weights file the trials name (`pretrained`) is there."""
    from drainage_bench.trainer.pretrained import require_weights

    for config in configs:
        require_weights(config)


def _require_corruptions(configs: list, data_root: str | None, address: str | None) -> None:
    """Released corruption folders (CIFAR-10-C, ...) asked for by `configs` are checked before Ray starts."""
    from drainage_bench.trainer.corruptions import RELEASED, released_files
    from drainage_bench.trainer.data import resolve_data_root

    if not address:
        for name in sorted({c.corruptions for c in configs} & set(RELEASED)):
            released_files(name, resolve_data_root(data_root))


def _expand(spec, data_root: str | None, storage: str | None, results: Path, overrides: dict | None = None):
    """The spec's TrialConfigs; `params = "tuned"` entries read the Optuna studies in `storage`."""
    from drainage_bench.sweeps.search import tuned_lookup

    extra = {**({"data_root": data_root} if data_root else {}), **(overrides or {})}
    return spec.expand(extra, tuned=tuned_lookup(_storage_url(storage, results)))


@app.command("sweeps")
def sweeps_() -> None:
    """List the named sweeps that ship with drainage-bench, with their trial counts."""
    from drainage_bench.sweeps.spec import builtin_specs, load_spec

    table = Table("name", "dataset", "trials", "description", box=None)
    for name in sorted(builtin_specs()):
        spec = load_spec(name)
        n = len(spec.losses) * len(spec.noise) * len(spec.openset) * len(spec.seeds)
        table.add_row(name, spec.dataset, str(n), spec.description)
    console.print(table)


@app.command()
def sweep(
    name: Annotated[str, typer.Argument(help="A named sweep (see `drainage-bench sweeps`) or a spec .toml file.")],
    results: ResultsRoot = Path("results"),
    data_root: DataRoot = None,
    download: DownloadOpt = False,
    set_: SetOpt = None,
    cpus_per_trial: CpusOpt = None,
    gpus_per_trial: GpusOpt = None,
    max_concurrent: MaxConcurrentOpt = None,
    address: AddressOpt = None,
    storage: StorageOpt = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run failed trials again.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the trials and what would run; run nothing.")] = False,
    noise: Annotated[Optional[list[str]], typer.Option("--noise", help="Replace the spec's noise settings: none | sym:R | asym:R | instance:R | human[:KEY] | file:PATH (repeatable).")] = None,
) -> None:
    """Run (or resume) a sweep: every trial without a record in RESULTS/NAME/ runs on Ray Tune."""
    import time

    from drainage_bench.analysis.store import ResultsStore
    from drainage_bench.config import parse_set
    from drainage_bench.sweeps.expected import record_expected
    from drainage_bench.sweeps.spec import load_spec
    from drainage_bench.sweeps.tune_runner import Progress, check_fits, plan, run_trials, start_ray

    from drainage_bench.sweeps.spec import with_noise
    from drainage_bench.trainer.noise import check_label_files

    spec = with_noise(load_spec(name), noise)
    configs = _expand(spec, data_root, storage, results, parse_set(set_))
    store = ResultsStore(results, spec.name)
    todo = plan(configs, store, retry_failed)
    res = _resources(spec.resources, cpus_per_trial, gpus_per_trial, max_concurrent, address, todo.todo)
    console.print(f"sweep [bold]{spec.name}[/]: {len(todo.configs)} trials, {len(todo.done)} recorded, "
                  f"[bold]{len(todo.todo)}[/] to run ({res.cpus_per_trial:g} CPU, {res.gpus_per_trial:g} GPU per trial)")
    if dry_run:
        table = Table("trial_id", "loss", "noise", "seed", "state", box=None)
        to_run = {c.trial_id for c in todo.todo}
        for c in todo.configs:
            state = "to run" if c.trial_id in to_run else todo.done.get(c.trial_id, "")
            table.add_row(c.trial_id, c.label or c.loss, c.noise_tag, str(c.seed), state)
        console.print(table)
        return
    _writable(store.path, "--results", results)
    if todo.todo:
        _require_dataset(spec.dataset, data_root, address, download)
        if not address:  # on a cluster the data may live on the workers only: each trial checks its file
            check_label_files(todo.todo)  # one label per training sample, before Ray starts
            _require_weights(todo.todo)
        _require_corruptions(todo.todo, data_root, address)
        for other in sorted({c.openset[3:] for c in todo.todo if c.openset.startswith("vs:")}):
            _require_dataset(other, data_root, address)  # cross-dataset open-set unknowns
    if todo.todo:  # before anything is written: a trial share no node can hold is refused
        start_ray(address)
        check_fits(res, address)
    record_expected(store, spec, configs)  # what `table` and `status` read as the sweep's trial list
    progress = Progress(plan=todo, store=store, metric=spec.metric, emit=lambda m: console.print(m, highlight=False))
    start = time.monotonic()
    run_trials(todo.todo, store, res, progress=progress, address=address, retry_failed=retry_failed)
    store.refresh_indexes()
    after = plan(configs, store)
    failed = sum(1 for s in after.done.values() if s != "ok")
    console.print(f"[bold]{spec.name}[/]: {len(after.done)}/{len(after.configs)} trials recorded "
                  f"({failed} failed), {len(after.todo)} missing, {time.monotonic() - start:.0f}s. "
                  f"Table: drainage-bench table {spec.name}" + (f" --results {results}" if str(results) != "results" else ""))


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="A named sweep or a spec .toml file.")],
    results: ResultsRoot = Path("results"),
    storage: StorageOpt = None,
) -> None:
    """Report a sweep's state from the results store, without running anything."""
    from collections import Counter

    from drainage_bench.analysis.store import ResultsStore
    from drainage_bench.sweeps.expected import record_expected, recorded_expected
    from drainage_bench.sweeps.spec import load_spec

    spec = load_spec(name)
    store = ResultsStore(results, spec.name)
    expected = recorded_expected(store, spec)  # the list the last run recorded: no spec expansion
    if expected is None:
        configs = _expand(spec, None, storage, results)
        if store.path.is_dir():
            expected = record_expected(store, spec, configs)
        else:
            from drainage_bench.sweeps.expected import expected_frame

            expected = expected_frame(configs, spec.name)
    statuses = store.statuses()
    counts: dict[str, Counter] = {}
    total: Counter = Counter()
    for trial_id, label, loss in zip(expected["trial_id"], expected["label"], expected["loss"]):
        state = statuses.get(trial_id, "missing")
        counts.setdefault(label if isinstance(label, str) else loss, Counter())[state] += 1
        total[state] += 1
    table = Table("loss", "ok", "failed", "missing", box=None)
    for loss, n in counts.items():
        table.add_row(loss, str(n["ok"]), str(n["failed"]), str(n["missing"]))
    console.print(table)
    console.print(f"{spec.name}: {total['ok']} ok, {total['failed']} failed, {total['missing']} missing "
                  f"of {len(expected)} trials ({store.path})")


# ---------------------------------------------------------------------------------------------
# Tables and figures

SweepsArg = Annotated[Optional[list[str]], typer.Argument(help="Sweeps (folders under RESULTS); default: the only one there.")]
WhereOpt = Annotated[Optional[list[str]], typer.Option("--where", help="Keep trials with FIELD=VALUE (repeatable, AND; VALUE may be a,b: OR).")]
LossFilter = Annotated[Optional[list[str]], typer.Option("--loss", help="Keep these losses: name or table name (repeatable).")]
MetricOpt = Annotated[Optional[str], typer.Option(help="final_test_acc | test_acc_at_best_val | best_val_acc | final_val_acc | best_test_acc (selected on the test set) | last10_test_acc | final_imagenet_acc | drainage_clean | drainage_noisy | final_test_nll | final_test_ece | corruption_error | corruption_nll | corruption_ece (per group: corruption_error_noise, ...) (default: the spec's, else final_test_acc).")]


@app.command()
def table(
    sweeps: SweepsArg = None,
    results: ResultsRoot = Path("results"),
    where: WhereOpt = None,
    loss: LossFilter = None,
    metric: Annotated[Optional[list[str]], typer.Option(help="A metric of the catalogue (default: the spec's, else final_test_acc); several (repeated, or a,b,c) are shown side by side, e.g. openset_auroc_msp,openset_auroc_pd,openset_closed_acc.")] = None,
    format_: Annotated[Optional[str], typer.Option("--format", help="terminal | markdown | latex | csv | json (default: from --output's suffix, else terminal).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Write the table to this file.")] = None,
    standalone: Annotated[bool, typer.Option("--standalone", help="LaTeX only: a whole document that pdflatex compiles as is.")] = False,
    compare_to: Annotated[Optional[str], typer.Option("--compare-to", help="Add to each cell the mean difference to this row (loss or table name), paired by seed, with a 95% paired-t interval.")] = None,
    ranks: Annotated[bool, typer.Option("--ranks", help="Add the rank summary: mean rank per loss over the columns, Friedman test, Nemenyi critical difference.")] = False,
) -> None:
    """The paper table: one row per loss, one column per noise setting, mean ± std over seeds (%)."""
    from drainage_bench.analysis.tables import (add_comparison, add_ranks, aggregate_metrics, format_for, format_table,
                                                load_selection)

    fmt = format_for(output, format_)
    if standalone and fmt != "latex":
        raise UserError(f"--standalone applies to --format latex only, not {fmt}")
    metrics = [name.strip() for item in metric or [] for name in item.split(",") if name.strip()]
    selection = load_selection(results, sweeps, where, loss, metrics[0] if len(metrics) == 1 else None)
    if len(metrics) > 1 and (compare_to is not None or ranks):
        raise UserError("--compare-to and --ranks take one --metric; drop the others")
    data = aggregate_metrics(selection, metrics)
    if compare_to is not None:
        add_comparison(data, selection, compare_to)
    if ranks:
        add_ranks(data)
    if output is None:
        width = console.width if console.is_terminal else 200  # piped: no wrapping
        sys.stdout.write(format_table(data, fmt, styled=console.is_terminal, width=width))
        return
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; name a file in it, e.g. {output / 'table.csv'}")
    _writable(output.parent, "--output", output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(format_table(data, fmt, standalone=standalone))
    console.print(f"wrote {output} ({fmt})", highlight=False)


@app.command()
def plot(
    sweeps: SweepsArg = None,
    results: ResultsRoot = Path("results"),
    out: Annotated[Optional[Path], typer.Option(help="Folder for the figures (default: RESULTS/SWEEP/figures).")] = None,
    metric: MetricOpt = None,
    setting: Annotated[Optional[str], typer.Option(help="Noise setting of the learning curves and histograms: clean, asym0.4, human-worse_label (default: the noisiest).")] = None,
    loss: LossFilter = None,
    where: WhereOpt = None,
    jobs: Annotated[Optional[int], typer.Option(min=1, help="Processes drawing figures at once (default: the CPUs available; 1 on macOS and Windows).")] = None,
) -> None:
    """Figures as PNG and PDF: accuracy vs noise rate, learning curves, drainage histograms."""
    from drainage_bench.analysis.plots import default_out_dir, make_figures
    from drainage_bench.analysis.tables import load_selection

    selection = load_selection(results, sweeps, where, loss)
    out = _writable(out or default_out_dir(results, selection.sweeps), "--out")
    paths, notes = make_figures(selection, out, metric, setting, jobs)
    for path in paths:
        console.print(f"wrote {path}", highlight=False)
    for note in notes:
        console.print(f"[dim]{note}[/]", highlight=False)


# ---------------------------------------------------------------------------------------------
# Optuna: tune loss parameters on the 80/20 split, inspect studies

def _storage_url(storage: str | None, results: Path) -> str:
    from drainage_bench.sweeps.search import resolve_storage

    return resolve_storage(storage, results)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command()
def tune(
    target: Annotated[str, typer.Argument(metavar="SPEC", help="A sweep (name or .toml: its dataset, settings, tuned losses and noise) or a dataset name.")],
    loss: Annotated[Optional[list[str]], typer.Option("--loss", help="Loss to tune (repeatable; default: the spec's losses with params = \"tuned\").")] = None,
    noise: Annotated[Optional[list[str]], typer.Option("--noise", help="none | sym:R | asym:R | instance:R | human[:KEY] | file:PATH (repeatable; default: the spec's).")] = None,
    trials: Annotated[int, typer.Option(help="Complete trials each study should hold; running again tops it up.")] = 50,
    space: Annotated[Optional[list[str]], typer.Option("--space", help="Search range: NAME=loguniform:LOW:HIGH | uniform:LOW:HIGH | choice:A,B | off (repeatable).")] = None,
    pruner: Annotated[str, typer.Option(help="median | hyperband | none")] = "median",
    objective: Annotated[str, typer.Option(help="final_val_acc | best_val_acc: validation accuracy at the last or the best epoch.")] = "final_val_acc",
    val_labels: Annotated[str, typer.Option(help="Score on the clean or the noisy labels of the validation part.")] = "clean",
    seed: Annotated[int, typer.Option(help="Seed of the trials (noise, initialisation, data order) and of the TPE sampler.")] = 0,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    results: ResultsRoot = Path("results"),
    data_root: DataRoot = None,
    cpus_per_trial: CpusOpt = None,
    gpus_per_trial: GpusOpt = None,
    max_concurrent: MaxConcurrentOpt = None,
    address: AddressOpt = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run the trials one by one in this process, without Ray.")] = False,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats of running trials; a trial silent for 3 is taken as lost.")] = 20.0,
) -> None:
    """Search loss parameters with Optuna: train on 80% of the training set, score on the other 20%."""
    from drainage_bench.config import parse_set
    from drainage_bench.sweeps.search import plan_tune, run_search

    overrides = {**parse_set(set_), **({"data_root": data_root} if data_root else {})}
    plan = plan_tune(target, loss, noise, overrides=overrides, space=space, trials=trials, objective=objective,
                     pruner=pruner, seed=seed, val_labels=val_labels, heartbeat=heartbeat)
    url = _storage_url(storage, results)
    if storage is None:  # the default study file lives in the results folder
        _writable(results)
    res = None if in_process else _resources(plan.resources, cpus_per_trial, gpus_per_trial, max_concurrent,
                                             address, [s.base for s in plan.searches])
    if in_process:  # trials in this process follow the thread policy of Ray's trials
        from drainage_bench.trainer.provenance import use_cpu_share

        use_cpu_share(cpus_per_trial if cpus_per_trial is not None else plan.resources.get("cpus_per_trial", 1))
    _require_dataset(plan.searches[0].base.dataset, data_root, address)
    from drainage_bench.trainer.noise import check_label_files

    check_label_files([s.base for s in plan.searches])  # file noise: one label per training sample
    _require_weights([s.base for s in plan.searches])
    if res is not None:  # before the study is written: a trial share no node can hold is refused
        from drainage_bench.sweeps.tune_runner import check_fits, start_ray

        start_ray(address)
        check_fits(res, address)
    console.print(f"storage {url}", highlight=False)
    for search in plan.searches:
        tally = run_search(search, url, resources=res, address=address,
                           emit=lambda m: console.print(m, highlight=False, markup=False))
        params = " ".join(f"{k}={_fmt(v)}" for k, v in (tally["best_params"] or {}).items())
        console.print(f"[bold]{search.name}[/]: {tally['complete']} complete, {tally['pruned']} pruned, "
                      f"{tally['fail']} failed | best {_pct(tally['best_value'])}% ({search.objective}) at "
                      f"#{tally['best_number']}: {params} | drainage-bench study show {search.name}", highlight=False)


study_app = typer.Typer(no_args_is_help=True, help="Inspect Optuna studies: list, show NAME, plot NAME.")
app.add_typer(study_app, name="study")


@study_app.command("list")
def study_list(storage: StorageOpt = None, results: ResultsRoot = Path("results")) -> None:
    """Every study with its complete / pruned / failed trials, best value and best parameters."""
    from drainage_bench.sweeps.studies import list_studies

    url = _storage_url(storage, results)
    rows = list_studies(url)
    table = Table("study", "complete", "pruned", "failed", "running", "best val %", "trial", "best parameters", box=None)
    for row in rows:
        c = row.counts
        table.add_row(row.name, str(c["complete"]), str(c["pruned"]), str(c["fail"]), str(c["running"]),
                      _pct(row.best_value), "" if row.best_number is None else f"#{row.best_number}",
                      " ".join(f"{k}={_fmt(v)}" for k, v in row.best_params.items()))
    console.print(table if rows else f"no studies in {url}")


@study_app.command("show")
def study_show(
    name: Annotated[str, typer.Argument(help="Study name (see `drainage-bench study list`).")],
    storage: StorageOpt = None,
    results: ResultsRoot = Path("results"),
    top: Annotated[int, typer.Option(min=1, help="How many of the best trials to list.")] = 10,
) -> None:
    """The best trials, parameter importances, and the command to open the study in optuna-dashboard."""
    from drainage_bench.sweeps.studies import best_trials, dashboard_command, importances, load, recipe_trial

    url = _storage_url(storage, results)
    study = load(url, name)
    attrs = study.user_attrs
    console.print(f"[bold]{name}[/] in {url}: maximise {attrs.get('objective', 'the objective')} on the "
                  f"validation part; {len(study.trials)} trials", highlight=False)
    best = best_trials(study, top)
    names = list(dict.fromkeys(k for t in best for k in t.params))
    table = Table("trial", "val %", *names, "epochs", "seconds", box=None)
    for t in best:
        table.add_row(f"#{t.number}" + (" (recipe)" if t.user_attrs.get("recipe_defaults") else ""), _pct(t.value),
                      *[_fmt(t.params.get(n, "")) for n in names], str(t.user_attrs.get("epochs_run", "")),
                      f"{t.user_attrs.get('wall_seconds', math.nan):.0f}")
    console.print(table if best else "no complete trials yet")
    recipe = recipe_trial(study)
    if recipe is not None:
        console.print(f"recipe values (#{recipe.number}): val {_pct(recipe.value)}%", highlight=False)
    scores, why = importances(study)
    console.print("importances: " + (" ".join(f"{k} {v:.2f}" for k, v in scores.items()) or why), highlight=False)
    console.print(f"dashboard: {dashboard_command(url)}   (pip install optuna-dashboard)", highlight=False)


@study_app.command("plot")
def study_plot(
    name: Annotated[str, typer.Argument(help="Study name (see `drainage-bench study list`).")],
    storage: StorageOpt = None,
    results: ResultsRoot = Path("results"),
    out: Annotated[Optional[Path], typer.Option(help="Folder for the PNG files (default: RESULTS/studies/NAME).")] = None,
) -> None:
    """Optimisation history, the landscape of the two most important parameters, slices, learning curves (PNG)."""
    from drainage_bench.sweeps.studies import load, plot_study

    study = load(_storage_url(storage, results), name)
    for path in plot_study(study, _writable(out or results / "studies" / name, "--out")):
        console.print(f"wrote {path}", highlight=False)



if __name__ == "__main__":
    main()

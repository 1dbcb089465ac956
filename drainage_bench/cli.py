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

from drainage_bench.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run, resume and report benchmark sweeps of robust losses under label noise.")
console = Console()
err_console = Console(stderr=True)

DataRoot = Annotated[Optional[str], typer.Option("--data-root", help="Data folder (else $DRAINAGE_BENCH_DATA, else ./data).")]
ResultsRoot = Annotated[Path, typer.Option("--results", help="Results root folder.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a trial field or loss parameter: key=value (repeatable).")]


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except UserError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _pct(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


# ---------------------------------------------------------------------------------------------
# Reference listings


@app.command()
def losses() -> None:
    """List every loss with its parameters and defaults."""
    from drainage_bench.trainer.losses import LOSSES, display_name, loss_defaults

    table = Table("name", "display", "parameters (defaults)", "paper", box=None)
    for name, cls in LOSSES.items():
        params = ", ".join(f"{k}={v}" for k, v in loss_defaults(name).items()) or "—"
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
    noise: Annotated[str, typer.Option(help="none | sym:R | asym:R | instance:R | human[:KEY]")] = "none",
    seed: Annotated[int, typer.Option(help="Seed of the noise, the initialisation and the data order.")] = 0,
    epochs: Annotated[Optional[int], typer.Option(help="Override the recipe's number of epochs.")] = None,
    set_: SetOpt = None,
    data_root: DataRoot = None,
    results: ResultsRoot = Path("results"),
    name: Annotated[str, typer.Option(help="Results subfolder for single trials.")] = "train",
) -> None:
    """Train one trial and write its records to RESULTS/NAME/."""
    from drainage_bench.config import build_config, parse_set
    from drainage_bench.trainer.noise import parse_noise

    noise_type, rate, key = parse_noise(noise)
    overrides = {"noise": noise_type, "noise_rate": rate, "noise_key": key, "seed": seed, **parse_set(set_)}
    if epochs is not None:
        overrides["epochs"] = epochs
    if data_root is not None:
        overrides["data_root"] = data_root
    config = build_config(dataset, loss, overrides)
    console.print(f"trial {config.trial_id}: {config.dataset} {config.loss} {config.noise_tag} "
                  f"seed {config.seed}, {config.model}, {config.epochs} epochs, lr {config.lr:g}")

    def show(m: dict) -> None:
        drain = "" if math.isnan(m["drainage_share_noisy"]) else (
            f"  drained clean {_pct(m['drainage_share_clean'])}% mislabeled {_pct(m['drainage_share_noisy'])}%")
        console.print(f"epoch {m['epoch']:>3}/{config.epochs}  loss {m['train_loss']:.4f}  "
                      f"train(noisy) {_pct(m['train_acc_noisy'])}%  train(clean) {_pct(m['train_acc_clean'])}%  "
                      f"test {_pct(m['test_acc'])}%{drain}  {m['epoch_seconds']:.1f}s", highlight=False)

    from drainage_bench.analysis.store import ResultsStore
    from drainage_bench.trainer.loop import run_trial

    result = run_trial(config, on_epoch=show)
    ResultsStore(results, name).write_trial(result.record(), result.epochs, result.samples)
    s = result.summary
    line = (f"{result.status}: test {_pct(s.get('final_test_acc'))}% | noise {_pct(result.realized_noise_rate)}% "
            f"| {result.wall_seconds:.1f}s on {result.device} | {results / name / 'trials' / (config.trial_id + '.parquet')}")
    console.print(line if result.status == "ok" else f"[red]{line}[/]\n{result.error}", highlight=False)
    if result.status != "ok":
        raise typer.Exit(1)


if __name__ == "__main__":
    main()

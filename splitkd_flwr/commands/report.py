"""`splitkd report`: a finished run's per-round table, summary and plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import click
import typer

from splitkd_flwr.flower.report import plot_rounds, print_report, read_records


def report(
    output_dir: Annotated[Path, typer.Argument(help="the run's output-dir")] = Path(
        "outputs/simulation"
    ),
) -> None:
    """Print the rounds of a run, its summary, and write ``rounds.png`` beside them."""
    try:
        records = read_records(output_dir)
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from err
    summary_path = output_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    print_report(records, summary)
    typer.echo(f"plot: {plot_rounds(records, output_dir / 'rounds.png')}")

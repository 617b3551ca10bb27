"""`splitkd simulate`: the 10-vehicle split-KD run on Flower's simulation engine."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import click
import torch
import typer

from splitkd_flwr.default_models.prepare import prepare_default_models
from splitkd_flwr.flower.launch import LocalFederation

APP_DIR = Path(__file__).resolve().parents[2]  # the project root (pyproject.toml)


def _pairs(items: list[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value, got {item!r}")
        for cast in (int, float):
            try:
                values[key] = cast(raw)
                break
            except ValueError:
                continue
        else:
            values[key] = raw.strip("'\"")
    return values


def simulate(
    vehicles: Annotated[int, typer.Option(help="simulated SuperNodes (vehicles)")] = 10,
    rounds: Annotated[
        int, typer.Option(help="training rounds (one vehicle each)")
    ] = 10,
    output_dir: Annotated[
        Path, typer.Option(help="metrics, summary and the student")
    ] = Path("outputs/simulation"),
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="extra run-config key=value (repeatable), e.g. planner=energy-optimal",
        ),
    ] = None,
) -> None:
    """Prepare the default models, then run split KD with N simulated vehicles and report."""
    started = time.monotonic()
    # Server and vehicles share this machine's cores and mostly take turns (the split step is
    # sequential); one thread each avoids the oversubscription that makes torch crawl.
    torch.set_num_threads(1)
    models = prepare_default_models(progress=True)
    typer.echo(
        f"default models in {models.root} (teacher perplexity {models.teacher_perplexity:.2f}, "
        f"initial student {models.student_perplexity:.2f})"
    )
    output_dir = output_dir.expanduser().resolve()
    run_config = {
        "num-rounds": rounds,
        "output-dir": str(output_dir),
        **_pairs(set_ or []),
    }
    federation_config = {"num-supernodes": vehicles, "client-resources-num-cpus": 1}
    with tempfile.TemporaryDirectory(prefix="splitkd-flwr-home-") as home:
        with LocalFederation(home=Path(home), simulation=True, threads=1) as federation:
            rc = federation.run(APP_DIR, run_config, federation_config)
    summary_path = output_dir / "summary.json"
    if rc != 0 or not summary_path.is_file():
        raise click.ClickException(
            f"`flwr run` failed (exit code {rc}); see the log above"
        )
    summary = json.loads(summary_path.read_text())
    typer.echo(f"\nsimulation finished in {time.monotonic() - started:.0f} s")
    for key, value in summary.items():
        typer.echo(f"  {key}: {value}")

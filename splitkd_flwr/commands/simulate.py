"""`splitkd simulate`: the 10-vehicle split-KD run on Flower's simulation engine."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import click
import typer

from splitkd_flwr.core.errors import SplitKDError
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.launch import LocalFederation
from splitkd_flwr.flower.preflight import check_run
from splitkd_flwr.flower.report import format_value
from splitkd_flwr.flower.vehicle_data import VehicleData

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


def simulation_run_config(
    output_dir: Path,
    rounds: int | None,
    resume: Path | None,
    overrides: dict[str, object],
) -> dict[str, object]:
    """The run config of `simulate`: a resumed run's saved one, or a fresh 10-round one.

    ``--rounds`` and ``--set`` (``overrides``) override either.
    """
    if resume is not None:
        output_dir = resume
        saved = output_dir / "run-config.json"
        if not saved.is_file():
            raise click.BadParameter(
                f"no run-config.json in {output_dir}", param_hint="--resume"
            )
        run_config = {**json.loads(saved.read_text()), "resume": True}
    else:
        run_config = {"num-rounds": 10}
    run_config["output-dir"] = str(output_dir.expanduser().resolve())
    if rounds is not None:
        run_config["num-rounds"] = rounds
    run_config.update(overrides)
    # The ServerApp runs in the SuperLink's working directory: a relative `--set
    # output-dir=...` is made absolute here, where the user typed it.
    run_config["output-dir"] = str(
        Path(str(run_config["output-dir"])).expanduser().resolve()
    )
    return run_config


def simulate(
    vehicles: Annotated[int, typer.Option(help="simulated SuperNodes (vehicles)")] = 10,
    rounds: Annotated[
        int | None,
        typer.Option(help="training rounds (one vehicle each) [default: 10]"),
    ] = None,
    output_dir: Annotated[
        Path, typer.Option(help="metrics, summary and the student")
    ] = Path("outputs/simulation"),
    resume: Annotated[
        Path | None,
        typer.Option(
            help="continue the run in this output folder after its last checkpoint "
            "(its saved run config; --rounds and --set override it)"
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="extra run-config key=value (repeatable), e.g. planner=energy-optimal",
        ),
    ] = None,
) -> None:
    """Check the run config, prepare any default model, run split KD with N vehicles, report."""
    started = time.monotonic()
    overrides = _pairs(set_ or [])
    run_config = simulation_run_config(output_dir, rounds, resume, overrides)
    output_dir = Path(str(run_config["output-dir"]))
    # The whole config, before a SuperLink, Ray or the default teacher's training starts.
    try:
        config = RunConfig.from_run_config(run_config)
        check_run(config, explicit=overrides)
        vehicle_data = VehicleData.from_run_config(config.to_run_config())
        if vehicle_data is not None:
            vehicle_data.check_partitions(vehicles)
    except SplitKDError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if "default" in (config.teacher, config.student):
        # Imported here: torch and transformers take seconds, a rejected config none.
        from splitkd_flwr.default_models.prepare import (  # noqa: PLC0415
            prepare_default_models,
        )

        models = prepare_default_models(progress=True)
        typer.echo(
            f"default models in {models.root} (teacher perplexity "
            f"{models.teacher_perplexity:.2f}, initial student {models.student_perplexity:.2f})"
        )
    federation_config = {"num-supernodes": vehicles, "client-resources-num-cpus": 1}
    # The apps set their own threads from the run config (`threads`); the environment
    # of every process started here says the same, for what runs before the apps do.
    threads = config.threads or None
    with tempfile.TemporaryDirectory(prefix="splitkd-flwr-home-") as home:
        with LocalFederation(
            home=Path(home), simulation=True, threads=threads
        ) as federation:
            rc = federation.run(APP_DIR, run_config, federation_config)
    summary_path = output_dir / "summary.json"
    if rc != 0 or not summary_path.is_file():
        typer.echo(
            f"error: the run did not finish (`flwr run` exit code {rc}, no "
            f"{summary_path}); the ServerApp's error is in the log above",
            err=True,
        )
        raise typer.Exit(1)
    summary = json.loads(summary_path.read_text())
    typer.echo(f"\nsimulation finished in {time.monotonic() - started:.0f} s")
    for key, value in summary.items():
        typer.echo(f"  {key}: {format_value(key, value)}")

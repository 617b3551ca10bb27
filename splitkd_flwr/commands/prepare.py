"""`splitkd prepare`: build the tokenizer, train the default teacher, cache them."""

from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console

from splitkd_flwr.core.errors import SplitKDError


def prepare(
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="cache root; default $SPLITKD_CACHE or ~/.cache/splitkd-flwr"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the initial weights")] = 0,
    steps: Annotated[
        int | None, typer.Option(help="teacher training steps (default: the recipe's)")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Prepare the default teacher and student (a few minutes once, then cached)."""
    from splitkd_flwr.default_models.prepare import (
        TeacherTraining,
        prepare_default_models,
    )

    console = Console()
    try:
        training = TeacherTraining(**({} if steps is None else {"num_steps": steps}))
        models = prepare_default_models(
            cache_dir, seed=seed, progress=progress, training=training
        )
    except SplitKDError as err:
        raise click.ClickException(str(err)) from err
    built = f"built in {models.prepare_s:.0f} s"
    state = "found in the cache" if models.cached else built
    console.print(f"Default models {state}:")
    console.print(f"  tokenizer  {models.tokenizer_dir}")
    console.print(f"  teacher    {models.teacher_dir}")
    console.print(f"  student    {models.student_dir}")
    console.print(
        f"Held-out perplexity: teacher {models.teacher_perplexity:.2f}, "
        f"initial student {models.student_perplexity:.1f}"
    )

"""`splitkd calibrate`: time the real models here, write a calibrated device profile for the planner."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from splitkd_flwr.core.errors import SplitKDError

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _hardware_name(device: str) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return f"CPU {line.split(':', 1)[1].strip()}"
    return f"CPU {platform.processor() or platform.machine()}"


def _parse_cuts(text: str, num_layers: int) -> list[int]:
    if text in ("all", "none"):
        return list(range(1, num_layers)) if text == "all" else []
    try:
        cuts = [int(c) for c in text.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"--cuts takes all, none or e.g. 1,4,8; got {text!r}"
        ) from None
    bad = [c for c in cuts if not 1 <= c <= num_layers - 1]
    if bad:
        raise click.BadParameter(f"cuts {bad} outside 1..{num_layers - 1}")
    return cuts


def _load(source: str, default_config: Any, dtype: str, device: str) -> Any:
    """A model from a directory, or the tiny default built from its config."""
    import torch

    from splitkd_flwr.data.tokenizer import DEFAULT_VOCAB_SIZE
    from splitkd_flwr.split.models import load_causal_lm

    if dtype not in DTYPES:
        raise click.BadParameter(
            f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}"
        )
    config = default_config(DEFAULT_VOCAB_SIZE) if source == "default" else source
    return load_causal_lm(config, dtype=getattr(torch, DTYPES[dtype])).to(device)


def calibrate(
    output: Annotated[Path, typer.Option(help="fleet TOML to write")] = Path(
        "profile.toml"
    ),
    teacher: Annotated[
        str, typer.Option(help="teacher directory or `default`")
    ] = "default",
    student: Annotated[
        str, typer.Option(help="student directory or `default`")
    ] = "default",
    device: Annotated[str, typer.Option(help="`cpu`, `cuda` or `cuda:N`")] = "cpu",
    dtype: Annotated[str, typer.Option(help="`fp32`, `fp16` or `bf16`")] = "fp32",
    batch_size: Annotated[int, typer.Option(help="sequences per mini-batch")] = 16,
    seq_len: Annotated[int, typer.Option(help="tokens per sequence")] = 64,
    repeats: Annotated[
        int, typer.Option(help="timed runs per op and cut (fastest kept)")
    ] = 5,
    cuts: Annotated[
        str, typer.Option(help="cuts to check: `all`, `none` or `1,4,8`")
    ] = "all",
    threads: Annotated[
        int, typer.Option(help="torch CPU threads (0: torch's default)")
    ] = 0,
    clock: Annotated[
        str, typer.Option(help="`auto`, `wall` or `cpu` (CPU time)")
    ] = "auto",
    name: Annotated[str, typer.Option(help="name of the profile written")] = "measured",
    extends: Annotated[
        str, typer.Option(help="base profile (clock, cores, power)")
    ] = "rtx4090",
    as_server: Annotated[
        bool, typer.Option("--as-server/--as-device", help="make it the fleet's server")
    ] = True,
    energy_meter: Annotated[str, typer.Option(help="meter while profiling")] = "auto",
) -> None:
    """Time teacher and student layer by layer, fit the cost model's throughput, write it."""
    import torch

    from splitkd_flwr.calibration.fleet import (
        calibrated_profile,
        check_table,
        fleet_toml,
    )
    from splitkd_flwr.calibration.timing import profile_machine
    from splitkd_flwr.default_models.configs import (
        default_student_config,
        default_teacher_config,
    )
    from splitkd_flwr.hardware.detect import detect_meter

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        teacher_model = _load(teacher, default_teacher_config, dtype, device)
        student_model = _load(student, default_student_config, dtype, device)
        checked = _parse_cuts(cuts, student_model.config.num_hidden_layers)
        meter = detect_meter(energy_meter)
        with meter.measure() as measured:
            result = profile_machine(
                teacher_model,
                student_model,
                batch_size=batch_size,
                seq_len=seq_len,
                repeats=repeats,
                cuts=checked,
                clock=clock,
            )
        meter.close()
        calibrated = calibrated_profile(result, name, extends, _hardware_name(device))
    except (SplitKDError, ValueError, OSError) as err:
        raise click.ClickException(str(err)) from err

    text = fleet_toml(result, calibrated, extends, as_server)
    reading = measured.reading
    if reading is not None and reading.mean_power_w is not None:
        power = f"{reading.mean_power_w:.1f} W ({reading.source})"
        text = f"# Mean power while profiling: {power}\n" + text
    output.write_text(text)
    typer.echo(
        f"effective throughput {result.effective_flops / 1e9:.2f} GFLOP/s ({result.clock} clock)"
        f" -> utilisation {calibrated.utilisation:.4g} of {extends!r}"
    )
    for line in check_table(result) if result.cuts else []:
        typer.echo(line)
    typer.echo(f"wrote {output}")

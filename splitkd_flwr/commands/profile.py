"""`splitkd profile`: time the real models here and write a calibrated profile for the planner."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import click
import typer

from splitkd_flwr.errors import SplitKDError

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _hardware_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"CPU {line.split(':', 1)[1].strip()}"
    return f"CPU {platform.processor() or platform.machine()}"


def _parse_cuts(text: str, num_layers: int) -> list[int]:
    if text == "all":
        return list(range(1, num_layers))
    if text == "none":
        return []
    try:
        cuts = [int(c) for c in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"--cuts takes 'all', 'none' or e.g. '1,4,8', got {text!r}") from None
    bad = [c for c in cuts if not 1 <= c <= num_layers - 1]
    if bad:
        raise click.BadParameter(f"cuts {bad} outside 1..{num_layers - 1}")
    return cuts


def profile(
    output: Annotated[Path, typer.Option(help="fleet file to write (TOML, read by `fleet = ...`)")] = Path(
        "profile.toml"
    ),
    teacher: Annotated[str, typer.Option(help="teacher directory or `default` (the tiny default config)")] = "default",
    student: Annotated[str, typer.Option(help="student directory or `default`")] = "default",
    device: Annotated[str, typer.Option(help="`cpu`, `cuda` or `cuda:N`")] = "cpu",
    dtype: Annotated[str, typer.Option(help="`fp32`, `fp16` or `bf16`")] = "fp32",
    batch_size: Annotated[int, typer.Option(help="sequences per mini-batch")] = 16,
    seq_len: Annotated[int, typer.Option(help="tokens per sequence")] = 64,
    repeats: Annotated[int, typer.Option(help="timed runs per op and per cut; the fastest is kept")] = 5,
    cuts: Annotated[str, typer.Option(help="cuts to check with whole split steps: `all`, `none`, `1,4,8`")] = "all",
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default)")] = 0,
    clock: Annotated[str, typer.Option(help="`auto`, `wall` or `cpu` (CPU time; one-thread CPU runs)")] = "auto",
    name: Annotated[str, typer.Option(help="name of the profile written")] = "measured",
    extends: Annotated[str, typer.Option(help="base profile whose clock, cores and power model are kept")] = "rtx4090",
    as_server: Annotated[bool, typer.Option("--as-server/--as-device", help="make it the fleet's server")] = True,
    energy_meter: Annotated[str, typer.Option(help="`auto`, `nvml`, `jetson`, `none`: power while profiling")] = "auto",
) -> None:
    """Time the teacher and student layer by layer here, fit the cost model's throughput, write a profile."""
    import torch

    from splitkd_flwr.data.defaults import default_student_config, default_teacher_config
    from splitkd_flwr.data.tokenizer import DEFAULT_VOCAB_SIZE
    from splitkd_flwr.hardware.calibration import calibrated_profile, check_table, fleet_toml
    from splitkd_flwr.hardware.detect import detect_meter
    from splitkd_flwr.hardware.profile import profile_machine
    from splitkd_flwr.split.models import load_causal_lm

    if dtype not in DTYPES:
        raise click.BadParameter(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if threads > 0:
        torch.set_num_threads(threads)
    torch_dtype = getattr(torch, DTYPES[dtype])
    try:
        models = [
            load_causal_lm(default(DEFAULT_VOCAB_SIZE) if src == "default" else src, dtype=torch_dtype).to(device)
            for src, default in ((teacher, default_teacher_config), (student, default_student_config))
        ]
        teacher_model, student_model = models
        checked = _parse_cuts(cuts, student_model.config.num_hidden_layers)
        meter = detect_meter(energy_meter)
        with meter.measure() as measured:
            result = profile_machine(teacher_model, student_model, batch_size=batch_size, seq_len=seq_len,
                                     repeats=repeats, cuts=checked, clock=clock)
        meter.close()
        calibrated = calibrated_profile(result, name, extends, _hardware_name(device))
    except (SplitKDError, ValueError, OSError) as err:
        raise click.ClickException(str(err)) from err
    text = fleet_toml(result, calibrated, extends, as_server)
    if measured.reading is not None and measured.reading.measured:
        power = measured.reading.mean_power_w
        text = f"# Mean power while profiling ({measured.reading.source}): {power:.1f} W\n" + text
    output.write_text(text)
    typer.echo(f"effective throughput {result.effective_flops / 1e9:.2f} GFLOP/s "
               f"({result.clock} clock) -> utilisation {calibrated.utilisation:.4g} of {extends!r}")
    for line in check_table(result) if result.cuts else []:
        typer.echo(line)
    typer.echo(f"wrote {output}")

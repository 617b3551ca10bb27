"""`splitkd plan`: the planners' choice for one device, link and delay bound, with its modelled cost."""

from __future__ import annotations

import math
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.table import Table

from splitkd_flwr.core.errors import SplitKDError


def plan(
    device: Annotated[
        str, typer.Option(help="device profile name (see the fleet)")
    ] = "agx-orin-1.3",
    delay_bound_s: Annotated[
        float | None, typer.Option(help="round delay bound (s); unset: none")
    ] = None,
    uplink_mbps: Annotated[
        float | None, typer.Option(help="uplink; unset: from distance, noise")
    ] = None,
    downlink_mbps: Annotated[
        float | None, typer.Option(help="downlink; unset: from distance, noise")
    ] = None,
    distance_m: Annotated[
        float, typer.Option(help="2D distance to the base station")
    ] = 100.0,
    los: Annotated[bool, typer.Option("--los/--nlos", help="line of sight")] = True,
    noise: Annotated[
        str, typer.Option(help="good / normal / poor or dBm/Hz")
    ] = "normal",
    batch_size: Annotated[int, typer.Option(help="sequences per mini-batch")] = 8,
    seq_len: Annotated[int, typer.Option(help="tokens per sequence")] = 512,
    batches_per_round: Annotated[int, typer.Option(help="mini-batches per round")] = 10,
    bytes_per_element: Annotated[
        int, typer.Option(help="wire and weight bytes (2 bf16, 4 fp32)")
    ] = 2,
    fleet: Annotated[str, typer.Option(help="fleet TOML ('' = paper Table II)")] = "",
    lora_rank: Annotated[
        int, typer.Option(help="student LoRA rank (0: full fine-tuning)")
    ] = 0,
    bf16_mixed: Annotated[
        bool, typer.Option("--bf16-mixed/--fp32", help="training precision")
    ] = False,
    teacher_bytes: Annotated[
        int, typer.Option(help="teacher bytes per weight (2 bf16, 4 fp32)")
    ] = 2,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="student gradient checkpointing")
    ] = False,
) -> None:
    """Print the energy-optimal plan and the server-only / device-only baselines for one round."""
    from splitkd_flwr.core.types import DeviceState, Workload
    from splitkd_flwr.simulation.channel import LinkConfig, path_loss_db
    from splitkd_flwr.simulation.devices import load_fleet
    from splitkd_flwr.simulation.planning import DeviceOnly, EnergyOptimal, ServerOnly
    from splitkd_flwr.simulation.scenario import noise_psd

    try:
        fleet_ = load_fleet(fleet or None)
        profile, server = fleet_.profile(device), fleet_.server_profile
        link = LinkConfig(noise_psd_dbm_hz=noise_psd(noise))
        loss = float(path_loss_db(distance_m, los, link.environment, link.carrier_hz))
        noise_dbm = link.noise_psd_dbm_hz + 10 * math.log10(link.noise_bandwidth_hz)
        # no shadowing: the median link
        budget_db = link.bs_gain_dbi + link.ue_gain_dbi - loss - noise_dbm
        snr = {
            "UL": 10 * math.log10(profile.tx_power_w * 1e3) + budget_db,
            "DL": 10 * math.log10(server.tx_power_w * 1e3) + budget_db,
        }
        up = (
            uplink_mbps * 1e6
            if uplink_mbps is not None
            else float(link.link_rate(snr["UL"], "UL")[1])
        )
        down = (
            downlink_mbps * 1e6
            if downlink_mbps is not None
            else float(link.link_rate(snr["DL"], "DL")[1])
        )
        state = DeviceState(
            0, 0, device, uplink_bps=up, downlink_bps=down, snr_db=snr["UL"]
        )
        workload = Workload(
            16,
            batch_size,
            seq_len,
            batches_per_round,
            bytes_per_element,
            bytes_per_element,
            lora_rank=lora_rank,
            mixed_precision=bf16_mixed,
            teacher_bytes_per_element=teacher_bytes,
            gradient_checkpointing=gradient_checkpointing,
            memory_limits=True,
        )
        plans = {
            cls.__name__: cls(workload, delay_bound_s=delay_bound_s, fleet=fleet_).plan(
                state, 1
            )
            for cls in (EnergyOptimal, ServerOnly, DeviceOnly)
        }
    except SplitKDError as err:
        raise click.ClickException(str(err)) from err

    console = Console()
    console.print(
        f"{device} ({profile.hardware}), uplink {up / 1e6:.1f} Mbit/s, "
        f"downlink {down / 1e6:.1f} Mbit/s"
        + (
            f", SNR {snr['UL']:.1f} dB at {distance_m:g} m"
            if uplink_mbps is None
            else ""
        )
        + f"; bound {'none' if delay_bound_s is None else f'{delay_bound_s:g} s'}"
    )
    table = Table("", *plans)
    rows = [
        ("cut layer", lambda p: str(p.cut_layer)),
        ("server clock (GHz)", lambda p: f"{p.modelled['server_clock_hz'] / 1e9:.3f}"),
        ("meets the bound", lambda p: "yes" if p.feasible else "NO"),
    ]
    rows += [
        (key, lambda p, k=key: f"{p.modelled[k]:.4g}")
        for key in next(iter(plans.values())).modelled
        if key != "server_clock_hz"
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(p) for p in plans.values()))
    console.print(table)
    console.print(_memory_table(workload, profile, server))


def _memory_table(workload, profile, server):  # noqa: ANN001, ANN202 - rich Table
    """Modelled memory (GB) of each side per cut, and whether it fits."""
    from splitkd_flwr.simulation.memory import GB, MemoryModel, fits

    memory = MemoryModel(workload)
    device, server_side = memory.device().total, memory.server().total
    fits_d = fits(device, profile.memory_bytes)
    fits_s = fits(server_side, server.memory_bytes)
    table = Table(
        "cut",
        f"device GB ({profile.memory_bytes / GB:.0f} GB)",
        "fits",
        f"server GB ({server.memory_bytes / GB:.0f} GB)",
        "fits",
        "weights MB / round",
        title="modelled memory per side (weights, grads, AdamW, activations, teacher)",
    )
    per_round = memory.weights_bytes_per_round()
    for i, cut in enumerate(memory.cuts):
        table.add_row(
            str(cut),
            f"{device[i] / GB:.2f}",
            "yes" if fits_d[i] else "NO",
            f"{server_side[i] / GB:.2f}",
            "yes" if fits_s[i] else "NO",
            f"{per_round[i] / 1e6:.1f}",
        )
    return table

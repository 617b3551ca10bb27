"""A measured machine profile as a fleet file the planner loads instead of peak figures."""

from __future__ import annotations

import json
import platform
import re
import socket
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timezone

from splitkd_flwr.calibration.timing import MachineProfile
from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.simulation.devices import DEFAULT_PROFILES, DeviceProfile


def calibrated_profile(
    profile: MachineProfile, name: str, extends: str, hardware: str
) -> DeviceProfile:
    """``extends``'s profile with the utilisation that gives the measured throughput.

    The cost model's throughput is ``2 * cores * clock_hz * utilisation``; clock, cores
    and the power model stay the base profile's, so the planner still scales with the
    clock.

    Raises
    ------
    ConfigError
        Unknown base, or a machine faster than the base's peak (utilisation > 1).
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(f"profile name must be letters, digits, - or _; got {name!r}")
    if extends not in DEFAULT_PROFILES:
        known = sorted(DEFAULT_PROFILES)
        raise ConfigError(f"unknown base profile {extends!r}: known {known}")
    base = DEFAULT_PROFILES[extends]
    utilisation = profile.effective_flops / base.peak_flops
    if not 0.0 < utilisation <= 1.0:
        raise ConfigError(
            f"measured {profile.effective_flops:.3g} FLOP/s is {utilisation:.3g} x the"
            f" peak of {extends!r} ({base.peak_flops:.3g} FLOP/s); extend a profile with a"
            " higher peak"
        )
    return replace(base, name=name, hardware=hardware, utilisation=utilisation)


def op_summary(profile: MachineProfile) -> list[tuple[str, int, float, float]]:
    """Per model and pass (``student forward``, ...): op count, FLOPs and seconds."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for op in profile.ops:
        model, _, direction = op.name.split(".")
        row = sums[f"{model} {direction}"]
        row[0], row[1], row[2] = row[0] + 1, row[1] + op.flops, row[2] + op.seconds
    return [(key, int(n), flops, seconds) for key, (n, flops, seconds) in sums.items()]


def check_table(profile: MachineProfile) -> list[str]:
    """The per-cut comparison as text lines (milliseconds)."""
    lines = ["cut  device ms (pred)   server ms (pred)    step ms (pred)   error"]
    for c in profile.cuts:
        lines.append(
            f"{c.cut:>3}  {c.device_s * 1e3:8.1f} ({c.predicted_device_s * 1e3:7.1f})"
            f"  {c.server_s * 1e3:8.1f} ({c.predicted_server_s * 1e3:7.1f})"
            f"  {c.step_s * 1e3:8.1f} ({c.predicted_step_s * 1e3:7.1f})"
            f"  {100 * c.error:+6.1f}%"
        )
    return lines


def fleet_toml(
    profile: MachineProfile, calibrated: DeviceProfile, extends: str, as_server: bool
) -> str:
    """A fleet file (``load_fleet``): the calibrated profile, measurements as comments."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    p = profile
    header = [
        f"Written by `splitkd calibrate` on {socket.gethostname()} ({platform.machine()})"
        f" at {stamp}.",
        f"Measured: {calibrated.hardware}; {p.device}, {p.dtype}, batch {p.batch_size}"
        f" x seq {p.seq_len}, {p.threads} thread(s), {p.clock} clock, fastest run.",
        f"Fitted effective throughput R = {p.effective_flops:.4g} FLOP/s"
        " (modelled FLOPs / measured s).",
        f"utilisation = R / peak of {extends!r} ({calibrated.peak_flops:.4g} FLOP/s);"
        " its clock, cores and",
        "power model (kappa, static power) are inherited, not measured.",
        "",
        "op                 count     GFLOP        ms    GFLOP/s",
    ]
    header += [
        f"{key:<18} {n:>5} {flops / 1e9:9.3f} {s * 1e3:9.2f} {flops / s / 1e9:10.2f}"
        for key, n, flops, s in op_summary(profile)
    ]
    if profile.cuts:
        header += ["", "Check: whole split steps, measured vs predicted at R:"]
        header += check_table(profile)
    lines = [f"# {line}".rstrip() for line in header] + [""]
    if as_server:
        lines.append(f"server = {json.dumps(calibrated.name)}")
    lines += [
        f"[profiles.{calibrated.name}]",
        f'extends = "{extends}"',
        f"hardware = {json.dumps(calibrated.hardware)}",
        f"utilisation = {calibrated.utilisation:.6g}",
    ]
    return "\n".join(lines) + "\n"

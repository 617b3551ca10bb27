"""Hardware profiles of the edge server and the devices (paper Table II), and fleets loaded from TOML."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from splitkd_flwr.core.errors import ConfigError

FLOPS_PER_CYCLE_PER_CORE = 2.0  # one FP32 fused multiply-add per core per cycle


@dataclass(frozen=True)
class DeviceProfile:
    """One kind of hardware: its GPU, its power model and its radio.

    Compute delay of ``F`` FLOPs at clock ``f``: ``F / (f * cores * 2 * utilisation)``;
    power while computing: ``kappa * f**3 + static_power_w`` (system-model.md section 3).
    """

    name: str
    hardware: str  # human-readable, e.g. "Jetson AGX Orin"
    clock_hz: float  # operating (maximum) GPU clock, Table II
    cores: int  # CUDA cores, Table II
    kappa: float  # W/Hz^3, calibrated so kappa * f_max**3 is the rated GPU power
    static_power_w: float  # drawn while computing, independent of the clock
    tx_power_w: (
        float  # radio transmit power (for the server: the base station's downlink)
    )
    utilisation: float = 0.4  # eta: achieved / peak FP32 throughput in training
    clock_steps_hz: tuple[float, ...] = ()  # DVFS steps, ascending; () -> (clock_hz,)
    memory_bytes: float = (
        0.0  # GPU-usable memory (Jetson: the shared DRAM); 0 = unknown
    )

    def __post_init__(self) -> None:
        checks = {
            "clock_hz": self.clock_hz,
            "cores": self.cores,
            "kappa": self.kappa,
            "utilisation": self.utilisation,
        }
        for key, value in checks.items():
            if not value > 0:
                raise ConfigError(
                    f"profile {self.name!r}: {key} must be > 0, got {value}"
                )
        if self.utilisation > 1:
            raise ConfigError(
                f"profile {self.name!r}: utilisation must be in (0, 1], got {self.utilisation}"
            )
        if self.memory_bytes < 0:
            raise ConfigError(f"profile {self.name!r}: memory_bytes must be >= 0")
        if self.static_power_w < 0 or self.tx_power_w < 0:
            raise ConfigError(f"profile {self.name!r}: powers must be >= 0")
        steps = tuple(sorted(float(s) for s in self.clock_steps_hz)) or (
            float(self.clock_hz),
        )
        if steps[0] <= 0 or steps[-1] > self.clock_hz * (1 + 1e-9):
            raise ConfigError(
                f"profile {self.name!r}: clock steps must lie in (0, clock_hz={self.clock_hz}]"
            )
        object.__setattr__(self, "clock_steps_hz", steps)

    @property
    def peak_flops(self) -> float:
        """Peak FP32 FLOP/s at the operating clock."""
        return FLOPS_PER_CYCLE_PER_CORE * self.cores * self.clock_hz

    @property
    def energy_optimal_clock_hz(self) -> float:
        """Clock minimising the energy of a fixed amount of work: ``(P_s / 2 kappa)^(1/3)``."""
        return float((self.static_power_w / (2 * self.kappa)) ** (1 / 3))


def _steps(low_hz: float, high_hz: float, step_hz: float) -> tuple[float, ...]:
    """Evenly spaced DVFS steps from ``low_hz`` up to and including ``high_hz``."""
    grid = np.arange(low_hz, high_hz, step_hz)
    return tuple(float(f) for f in grid) + (float(high_hz),)


# Paper Table II gives clock and cores only; every other number is [assumed] or [calc] as noted
# (sources in docs/case-study.md and ../shared/reference/system-model.md section 3).
# kappa [calc]: rated GPU power / f_max^3 (RTX 4090 450 W @ 2.52 GHz; AGX Orin ~40 W GPU rail
# @ 1.3 GHz; Orin NX ~15 W @ 0.918 GHz; AGX Xavier ~20 W @ 1.377 GHz). The 1.0 GHz Orin and
# 0.76 GHz Orin NX are the same silicon capped lower, so they share their sibling's kappa.
# static_power_w [assumed]: half the lowest nvpmodel power mode (Orin 15 W, Orin NX 10 W,
# Xavier 10 W); RTX 4090 board idle draw ~30 W.
# tx_power_w [assumed]: UE 23 dBm = 0.2 W; base station 35 dBm = 3.16 W (TR 38.901 calibration
# value at 30 GHz). Server steps [assumed]: NVML-style 15 MHz steps from 210 MHz; Jetson
# steps [assumed]: 102 MHz devfreq spacing from 306 MHz.
# memory_bytes [assumed variant, by the GPU clock Table II gives]: AGX Orin 1.3 GHz = the
# 64 GB module (its GPU tops out at 1.3 GHz); AGX Orin 1.0 GHz = the 32 GB module (930 MHz
# max, the closest); Orin NX 0.91 GHz = 16 GB (918 MHz max); Orin NX 0.76 GHz = 8 GB
# (765 MHz max); AGX Xavier = 32 GB; RTX 4090 = 24 GB GDDR6X. Jetson memory is shared
# with the CPU and OS; the memory model's headroom leaves room for them.
DEFAULT_PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            "rtx4090",
            "NVIDIA RTX 4090",
            2.52e9,
            16384,
            2.8e-26,
            30.0,
            3.16,
            clock_steps_hz=_steps(210e6, 2.52e9, 15e6),
            memory_bytes=24e9,
        ),
        DeviceProfile(
            "agx-orin-1.3",
            "Jetson AGX Orin",
            1.3e9,
            2048,
            1.8e-26,
            7.5,
            0.2,
            clock_steps_hz=_steps(306e6, 1.3e9, 102e6),
            memory_bytes=64e9,
        ),
        DeviceProfile(
            "agx-orin-1.0",
            "Jetson AGX Orin",
            1.0e9,
            2048,
            1.8e-26,
            7.5,
            0.2,
            clock_steps_hz=_steps(306e6, 1.0e9, 102e6),
            memory_bytes=32e9,
        ),
        DeviceProfile(
            "orin-nx-0.91",
            "Jetson Orin NX",
            0.91e9,
            1024,
            1.9e-26,
            5.0,
            0.2,
            clock_steps_hz=_steps(306e6, 0.91e9, 102e6),
            memory_bytes=16e9,
        ),
        DeviceProfile(
            "orin-nx-0.76",
            "Jetson Orin NX",
            0.76e9,
            1024,
            1.9e-26,
            5.0,
            0.2,
            clock_steps_hz=_steps(306e6, 0.76e9, 102e6),
            memory_bytes=8e9,
        ),
        DeviceProfile(
            "agx-xavier-1.2",
            "Jetson AGX Xavier",
            1.2e9,
            512,
            7.7e-27,
            5.0,
            0.2,
            clock_steps_hz=_steps(306e6, 1.2e9, 102e6),
            memory_bytes=32e9,
        ),
    )
}
DEFAULT_DEVICES: tuple[str, ...] = (  # devices 1-10 of Table II, in partition-id order
    "agx-orin-1.3",
    "agx-orin-1.3",
    "agx-orin-1.0",
    "agx-orin-1.0",
    "orin-nx-0.91",
    "orin-nx-0.91",
    "orin-nx-0.76",
    "orin-nx-0.76",
    "agx-xavier-1.2",
    "agx-xavier-1.2",
)


@dataclass(frozen=True)
class Fleet:
    """The server's profile, the device profiles, and which profile each device (partition) has."""

    server: str = "rtx4090"
    devices: tuple[str, ...] = DEFAULT_DEVICES
    profiles: Mapping[str, DeviceProfile] = field(
        default_factory=lambda: dict(DEFAULT_PROFILES)
    )
    # Energy budget (J) of each device, in ``devices`` order; 0 or () = unlimited
    energy_budgets_j: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.devices:
            raise ConfigError("a fleet needs at least one device")
        budgets = self.energy_budgets_j
        if budgets and (
            len(budgets) != len(self.devices) or any(not b >= 0 for b in budgets)
        ):
            raise ConfigError(
                f"fleet: energy_budgets_j needs {len(self.devices)} numbers >= 0 (one "
                f"per device, 0 = unlimited), got {list(budgets)}"
            )
        for name in (self.server, *self.devices):
            if name not in self.profiles:
                raise ConfigError(
                    f"unknown device profile {name!r}: known {sorted(self.profiles)}"
                )

    @property
    def server_profile(self) -> DeviceProfile:
        """The edge server's profile."""
        return self.profiles[self.server]

    def profile(self, name: str) -> DeviceProfile:
        """Return the profile called ``name``; raise ConfigError naming the known ones."""
        try:
            return self.profiles[name]
        except KeyError:
            raise ConfigError(
                f"unknown device profile {name!r}: known {sorted(self.profiles)}"
            ) from None

    def energy_budget_of(self, partition_id: int) -> float | None:
        """Energy budget (J) of device ``partition_id`` (wrapping around); None = unlimited."""
        if not self.energy_budgets_j:
            return None
        budget = self.energy_budgets_j[partition_id % len(self.devices)]
        return float(budget) if budget > 0 else None

    def profile_of(self, partition_id: int) -> DeviceProfile:
        """Profile of device ``partition_id`` (ids beyond the list wrap around)."""
        return self.profiles[self.devices[partition_id % len(self.devices)]]


_PROFILE_KEYS = {f.name for f in fields(DeviceProfile)} - {"name"}


def _profile_from_table(
    name: str, table: Mapping[str, Any], base: DeviceProfile | None
) -> DeviceProfile:
    unknown = set(table) - _PROFILE_KEYS - {"extends"}
    if unknown:
        raise ConfigError(
            f"profile {name!r}: unknown keys {sorted(unknown)}; allowed {sorted(_PROFILE_KEYS)}"
        )
    values = {k: v for k, v in table.items() if k != "extends"}
    if "clock_steps_hz" in values:
        values["clock_steps_hz"] = tuple(values["clock_steps_hz"])
    if base is not None:
        return replace(base, name=name, **values)
    missing = {
        "hardware",
        "clock_hz",
        "cores",
        "kappa",
        "static_power_w",
        "tx_power_w",
    } - set(values)
    if missing:
        raise ConfigError(
            f"profile {name!r}: missing keys {sorted(missing)} (or give 'extends')"
        )
    return DeviceProfile(name=name, **values)


def fleet_from_dict(data: Mapping[str, Any]) -> Fleet:
    """Build a fleet from a parsed TOML/JSON table, on top of the default profiles.

    Keys: ``server`` (profile name), ``devices`` (profile names in partition order),
    ``energy_budgets_j`` (one number per device, or one for all; 0 = unlimited) and
    ``[profiles.<name>]`` tables with DeviceProfile fields; ``extends = "<name>"`` copies
    an existing profile and overrides the keys given.
    """
    unknown = set(data) - {"server", "devices", "profiles", "energy_budgets_j"}
    if unknown:
        raise ConfigError(
            f"fleet: unknown keys {sorted(unknown)}; allowed server, devices, profiles, "
            "energy_budgets_j"
        )
    profiles = dict(DEFAULT_PROFILES)
    for name, table in dict(data.get("profiles", {})).items():
        parent = table.get("extends", name if name in profiles else None)
        if parent is not None and parent not in profiles:
            raise ConfigError(f"profile {name!r} extends unknown profile {parent!r}")
        profiles[name] = _profile_from_table(
            name, table, profiles.get(parent) if parent else None
        )
    devices: Sequence[str] = data.get("devices", DEFAULT_DEVICES)
    budgets = data.get("energy_budgets_j", ())
    if isinstance(
        budgets, (int, float)
    ):  # one number: the same budget for every device
        budgets = [budgets] * len(devices)
    return Fleet(
        server=data.get("server", "rtx4090"),
        devices=tuple(devices),
        profiles=profiles,
        energy_budgets_j=tuple(float(b) for b in budgets),
    )


def load_fleet(path: str | Path | None = None) -> Fleet:
    """Load a fleet from a TOML file; ``None`` gives the paper's Table II fleet."""
    if path is None:
        return Fleet()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read fleet file {str(path)!r}: {err}") from err
    return fleet_from_dict(data)

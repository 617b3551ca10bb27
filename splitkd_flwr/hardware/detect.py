"""Pick the energy meter and clock knob this machine has, or the ones a config names."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.hardware.clocks import ClockController, NullClock
from splitkd_flwr.hardware.jetson import JetsonClock, JetsonMeter
from splitkd_flwr.hardware.meters import EnergyMeter, HardwareUnavailable, NullMeter
from splitkd_flwr.hardware.nvml import NvmlClock, NvmlDevice, NvmlMeter

logger = logging.getLogger(__name__)
# Meter lines already logged by this process (each is logged once, then at DEBUG).
_REPORTED: set[str] = set()

BACKENDS = ("auto", "nvml", "jetson", "none")
T = TypeVar("T")


def _pick(
    name: str, what: str, builders: dict[str, Callable[[], T]], null: Callable[[str], T]
) -> T:
    """Build ``builders[name]``; for ``auto`` the first that works; else ``null(reasons)``."""
    if name not in BACKENDS:
        raise ConfigError(f"{what} must be one of {', '.join(BACKENDS)}, got {name!r}")
    reasons = []
    for backend, build in builders.items():
        if name not in ("auto", backend):
            continue
        try:
            return build()
        except HardwareUnavailable as err:
            if name == backend:
                raise ConfigError(
                    f"{what} = {name!r} but it is not usable here: {err} (use 'auto' or 'none')"
                ) from err
            reasons.append(str(err))
    return null(f"{what} = 'none'" if name == "none" else "; ".join(reasons))


def detect_meter(
    name: str = "auto",
    *,
    device_index: int = 0,
    sysfs_root: str | Path = "/sys",
    nvml: ModuleType | Any | None = None,
    interval_s: float = 0.05,
) -> EnergyMeter:
    """Build the energy meter ``name`` names; ``auto`` tries NVML, then Jetson rails, then none.

    Parameters
    ----------
    name : str
        ``auto``, ``nvml``, ``jetson`` or ``none``.
    device_index : int
        NVML index of the GPU to meter.
    sysfs_root : str or Path
        Where sysfs is mounted (tests: a fake tree).
    nvml : module, optional
        ``pynvml`` or a stand-in (tests).
    interval_s : float
        Sampling period of the sampling meters.

    Raises
    ------
    ConfigError
        An unknown name, or a named backend that is not usable here.
    """
    meter = _pick(
        name,
        "energy-meter",
        {
            "nvml": lambda: NvmlMeter(NvmlDevice(device_index, nvml), interval_s),
            "jetson": lambda: JetsonMeter(sysfs_root, interval_s),
        },
        NullMeter,
    )
    line = f"Energy meter: {meter.source}" + (
        f" ({meter.reason})" if isinstance(meter, NullMeter) else ""
    )
    # A device builds its meter every round; say what it found once per process.
    logger.log(logging.DEBUG if line in _REPORTED else logging.INFO, line)
    _REPORTED.add(line)
    return meter


def detect_clock(
    name: str = "auto",
    *,
    device_index: int = 0,
    sysfs_root: str | Path = "/sys",
    nvml: ModuleType | Any | None = None,
) -> ClockController:
    """Build the clock knob ``name`` names; ``auto`` tries NVML, then Jetson devfreq, then none.

    Parameters are as for :func:`detect_meter`. Permission is not checked here: a knob that
    turns out to need root reports ``applied=False`` when used.

    Raises
    ------
    ConfigError
        An unknown name, or a named backend that is not usable here.
    """
    return _pick(
        name,
        "gpu-clock",
        {
            "nvml": lambda: NvmlClock(NvmlDevice(device_index, nvml)),
            "jetson": lambda: JetsonClock(Path(sysfs_root) / "class" / "devfreq"),
        },
        NullClock,
    )

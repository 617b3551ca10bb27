"""The per-round hardware API: measured energy per phase and the GPU clock in force."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.hardware.clocks import ClockController, ClockSetting, NullClock
from splitkd_flwr.hardware.detect import detect_clock, detect_meter
from splitkd_flwr.hardware.meters import (
    EnergyMeter,
    EnergyReading,
    Measurement,
    NullMeter,
)

_PHASE = re.compile(r"^[a-z][a-z0-9-]*$")


class HardwareMonitor:
    """Measure phases and set the clock; hand back Flower-ready metrics once per round.

    A phase (``"server-compute"``, ``"device-compute"``) may be entered many times per
    round (once per mini-batch); its readings add up until :meth:`metrics` is taken.

    Examples
    --------
    >>> monitor = HardwareMonitor.from_config("auto", "auto")  # once per run
    >>> setting = monitor.apply_clock(plan.server_clock_hz)  # once per round
    >>> with monitor.measure("server-compute"):  # per mini-batch
    ...     server_step(...)
    >>> metrics = monitor.metrics()  # {"server-compute-measured-energy-j": ..., ...}
    >>> monitor.close()  # restores the clock
    """

    def __init__(
        self, meter: EnergyMeter | None = None, clock: ClockController | None = None
    ) -> None:
        self.meter = meter if meter is not None else NullMeter()
        self.clock = clock if clock is not None else NullClock()
        self._phases: dict[str, EnergyReading] = {}
        self._setting: ClockSetting | None = None

    @classmethod
    def from_config(
        cls,
        meter: str = "auto",
        clock: str = "auto",
        *,
        device_index: int = 0,
        sysfs_root: str | Path = "/sys",
        nvml: ModuleType | Any | None = None,
    ) -> HardwareMonitor:
        """Build from config names: ``auto``, ``nvml``, ``jetson`` or ``none`` for each."""
        return cls(
            detect_meter(
                meter, device_index=device_index, sysfs_root=sysfs_root, nvml=nvml
            ),
            detect_clock(
                clock, device_index=device_index, sysfs_root=sysfs_root, nvml=nvml
            ),
        )

    def apply_clock(self, hz: float | None) -> ClockSetting:
        """Lock the GPU clock near ``hz`` (``None``: release); never raises for lack of rights."""
        self._setting = self.clock.apply(hz)
        return self._setting

    @contextmanager
    def measure(self, phase: str) -> Iterator[Measurement]:
        """Measure the block's energy and add it to ``phase``."""
        if not _PHASE.match(phase):
            raise ConfigError(
                f"phase must be lower-case and hyphenated (e.g. 'server-compute'), got {phase!r}"
            )
        holder = Measurement()
        self.meter.start()
        try:
            yield holder
        finally:
            holder.reading = reading = self.meter.stop()
            previous = self._phases.get(phase)
            self._phases[phase] = reading if previous is None else previous + reading

    def metrics(self, reset: bool = True) -> dict[str, int | float]:
        """``MetricRecord``-ready figures of the phases since the last call, and the clock.

        Keys: ``<phase>-measured-energy-j``, ``<phase>-measured-mean-power-w``,
        ``<phase>-measured-duration-s``, ``<phase>-energy-measured`` (1/0), per extra rail
        ``<phase>-measured-<rail>-energy-j``; ``clock-applied`` (1/0), ``clock-requested-hz``,
        ``clock-applied-hz``, ``clock-current-hz``. Figures that were not measured are absent.
        """
        out: dict[str, int | float] = {}
        for phase, reading in sorted(self._phases.items()):
            out.update(reading.to_metrics(prefix=f"{phase}-"))
        if self._setting is not None:
            out.update(self._setting.to_metrics())
        if reset:
            self._phases = {}
        return out

    def labels(self) -> dict[str, str]:
        """``ConfigRecord``-ready text: ``energy-source``, ``clock-source``, ``clock-reason``."""
        out = {"energy-source": self.meter.source, "clock-source": self.clock.source}
        if self._setting is not None:
            out["clock-reason"] = self._setting.reason
        return out

    def close(self) -> None:
        """Restore the clock and release the sensors."""
        try:
            self.clock.close()
        finally:
            self.meter.close()

    def __enter__(self) -> HardwareMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

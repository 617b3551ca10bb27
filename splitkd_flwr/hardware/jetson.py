"""NVIDIA Jetson through sysfs: INA3221 power rails and the GPU's devfreq clock range."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from splitkd_flwr.hardware.clocks import ClockController, snap_up
from splitkd_flwr.hardware.meters import (
    EnergyReading,
    HardwareUnavailable,
    SamplingMeter,
)

# Rail labels of the upstream `ina3221` hwmon driver (JetPack 5+), first match wins.
# Module input: Orin NX/Nano and Xavier NX `VDD_IN`, Nano `POM_5V_IN`. AGX Orin and AGX
# Xavier have no input rail: their total is the sum of the labelled rails.
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
# GPU: AGX Orin `VDD_GPU_SOC` (GPU + SoC), AGX Xavier `GPU`, Nano `POM_5V_GPU`; on Orin
# NX/Nano and Xavier NX the GPU shares `VDD_CPU_GPU_CV` with the CPU and the DLA/PVA.
GPU_RAILS = ("VDD_GPU_SOC", "GPU", "POM_5V_GPU", "VDD_CPU_GPU_CV")
# devfreq node of the GPU: Orin `17000000.ga10b` (JetPack 5) / `17000000.gpu` (JetPack 6),
# Xavier `17000000.gv11b`, TX2 `17000000.gp10b`, Nano `57000000.gpu`.
GPU_DEVFREQ_SUFFIXES = (".ga10b", ".gv11b", ".gp10b", ".gpu")


@dataclass(frozen=True)
class Rail:
    """One INA3221 channel: ``in{N}_input`` (mV) times ``curr{N}_input`` (mA)."""

    label: str
    voltage_path: Path
    current_path: Path

    def power_w(self) -> float:
        """Instantaneous power of this rail in watts."""
        millivolts = float(self.voltage_path.read_text())
        milliamps = float(self.current_path.read_text())
        return millivolts * milliamps / 1e6


def find_rails(sysfs_root: str | Path = "/sys") -> dict[str, Rail]:
    """All labelled INA3221 channels under ``<sysfs_root>/bus/i2c/devices/*/hwmon/hwmon*/``.

    Unconnected channels (label ``NC``) and channels without a current reading are skipped.
    """
    rails: dict[str, Rail] = {}
    for label_path in sorted(
        Path(sysfs_root).glob("bus/i2c/devices/*/hwmon/hwmon*/in*_label")
    ):
        label = label_path.read_text().strip()
        channel = label_path.name[len("in") : -len("_label")]
        hwmon = label_path.parent
        voltage, current = hwmon / f"in{channel}_input", hwmon / f"curr{channel}_input"
        if label and label != "NC" and voltage.exists() and current.exists():
            rails.setdefault(label, Rail(label, voltage, current))
    return rails


class JetsonMeter(SamplingMeter):
    """Module power from the INA3221 rails, sampled by a thread.

    ``joules`` covers the input rail (or the sum of all rails where the board has none,
    named in ``note``); ``rails_j["gpu"]`` the GPU rail where the board has one.

    Parameters
    ----------
    sysfs_root : str or Path
        Where sysfs is mounted (``/sys``); tests point it at a fake tree.
    interval_s : float
        Sampling period.
    """

    source = "jetson-ina3221"

    def __init__(
        self, sysfs_root: str | Path = "/sys", interval_s: float = 0.05
    ) -> None:
        super().__init__(primary="total", interval_s=interval_s)
        self.rails = find_rails(sysfs_root)
        if not self.rails:
            raise HardwareUnavailable(
                f"no INA3221 rails under {sysfs_root}/bus/i2c/devices"
            )
        self.total_rail = next((r for r in TOTAL_RAILS if r in self.rails), None)
        self.gpu_rail = next((r for r in GPU_RAILS if r in self.rails), None)

    def read_power_w(self) -> Mapping[str, float]:
        """Power per rail (W) as ``{"total": ..., "gpu": ...}``."""
        watts = {label: rail.power_w() for label, rail in self.rails.items()}
        out = {
            "total": watts[self.total_rail] if self.total_rail else sum(watts.values())
        }
        if self.gpu_rail is not None:
            out["gpu"] = watts[self.gpu_rail]
        return out

    def _end(self, duration_s: float) -> EnergyReading:
        reading = super()._end(duration_s)
        if reading.measured and self.total_rail is None:
            return replace(
                reading, note="total = sum of rails " + "+".join(sorted(self.rails))
            )
        return reading


def find_gpu_devfreq(devfreq_root: str | Path = "/sys/class/devfreq") -> Path:
    """The GPU's devfreq directory, e.g. ``/sys/class/devfreq/17000000.ga10b``."""
    root = Path(devfreq_root)
    nodes = sorted(p for p in root.glob("*") if p.name.endswith(GPU_DEVFREQ_SUFFIXES))
    if not nodes:
        raise HardwareUnavailable(
            f"no GPU devfreq node under {root} (looked for *{', *'.join(GPU_DEVFREQ_SUFFIXES)})"
        )
    return nodes[0]


class JetsonClock(ClockController):
    """Pin the Jetson GPU clock by writing devfreq ``min_freq`` = ``max_freq`` (Hz).

    The request snaps up to a step of ``available_frequencies``; ``restore`` writes back the
    min/max found before the first change. Writing needs root.

    Parameters
    ----------
    devfreq_root : str or Path
        ``/sys/class/devfreq``; tests point it at a fake tree.
    node : str, optional
        The GPU's devfreq node name; found by its suffix when left out.
    """

    source = "jetson-devfreq"

    def __init__(
        self, devfreq_root: str | Path = "/sys/class/devfreq", node: str | None = None
    ) -> None:
        super().__init__()
        self.path = (
            Path(devfreq_root) / node if node else find_gpu_devfreq(devfreq_root)
        )
        if not (self.path / "available_frequencies").exists():
            raise HardwareUnavailable(f"{self.path} has no available_frequencies")
        self._original: tuple[int, int] | None = None

    def supported_hz(self) -> list[float]:
        """The GPU's clock steps in Hz."""
        return [
            float(f) for f in (self.path / "available_frequencies").read_text().split()
        ]

    def _read_range(self) -> tuple[int, int]:
        return int((self.path / "min_freq").read_text()), int(
            (self.path / "max_freq").read_text()
        )

    def _write(self, low_hz: int, high_hz: int) -> None:
        # The kernel refuses min > max at every step, so widen towards the new range first.
        writes = [("max_freq", high_hz), ("min_freq", low_hz)]
        if (
            low_hz <= self._read_range()[1]
        ):  # not above the current max: lower min first
            writes.reverse()
        for name, value in writes:
            (self.path / name).write_text(str(value))

    def _write_range(self, low_hz: int, high_hz: int) -> None:
        before = self._read_range()
        try:
            self._write(low_hz, high_hz)
        except OSError as err:
            if self._read_range() != before:  # half done: put back what was there
                self._write(*before)
            reason = "needs root" if isinstance(err, PermissionError) else str(err)
            raise HardwareUnavailable(
                f"writing {self.path}/{{min,max}}_freq: {reason}"
            ) from err

    def _set(self, hz: float) -> float:
        target_hz = int(snap_up(hz, self.supported_hz()))
        if self._original is None:
            self._original = self._read_range()
        self._write_range(target_hz, target_hz)
        return float(target_hz)

    def _reset(self) -> None:
        if self._original is not None:
            self._write_range(*self._original)
            self._original = None

    def current_hz(self) -> float | None:
        """``cur_freq`` now."""
        return float((self.path / "cur_freq").read_text())

"""Real energy meters and clock knobs: NVML, Jetson sysfs, and a null meter."""

from splitkd_flwr.hardware.clocks import (
    ClockController,
    ClockSetting,
    NullClock,
    snap_up,
)
from splitkd_flwr.hardware.detect import BACKENDS, detect_clock, detect_meter
from splitkd_flwr.hardware.jetson import JetsonClock, JetsonMeter, find_rails
from splitkd_flwr.hardware.meters import (
    EnergyMeter,
    EnergyReading,
    HardwareUnavailable,
    Measurement,
    NullMeter,
    SamplingMeter,
    integrate_trapezoid,
)
from splitkd_flwr.hardware.monitor import HardwareMonitor
from splitkd_flwr.hardware.nvml import NvmlClock, NvmlDevice, NvmlMeter

__all__ = [
    "BACKENDS",
    "ClockController",
    "ClockSetting",
    "EnergyMeter",
    "EnergyReading",
    "HardwareMonitor",
    "HardwareUnavailable",
    "JetsonClock",
    "JetsonMeter",
    "Measurement",
    "NullClock",
    "NullMeter",
    "NvmlClock",
    "NvmlDevice",
    "NvmlMeter",
    "SamplingMeter",
    "detect_clock",
    "detect_meter",
    "find_rails",
    "integrate_trapezoid",
    "snap_up",
]

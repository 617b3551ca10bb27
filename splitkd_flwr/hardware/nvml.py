"""NVIDIA GPUs through NVML (`pynvml`): board energy and locked graphics clocks."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from splitkd_flwr.hardware.clocks import ClockController, snap_up
from splitkd_flwr.hardware.meters import (
    EnergyReading,
    HardwareUnavailable,
    SamplingMeter,
)

logger = logging.getLogger(__name__)

_MHZ = 1e6


class NvmlDevice:
    """One GPU opened through NVML; the meter and the clock share it.

    Parameters
    ----------
    index : int
        The GPU's NVML index (``nvidia-smi`` order, not ``CUDA_VISIBLE_DEVICES`` order).
    nvml : module, optional
        The ``pynvml`` module, or a stand-in with the same functions (tests).

    Raises
    ------
    HardwareUnavailable
        No NVML library or driver, or no GPU ``index``.
    """

    def __init__(self, index: int = 0, nvml: ModuleType | Any | None = None) -> None:
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as err:
                raise HardwareUnavailable(
                    "pynvml is missing (pip install nvidia-ml-py)"
                ) from err
        self.nvml = nvml
        self.index = index
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            raise HardwareUnavailable(f"NVML not usable: {err}") from err
        try:
            count = nvml.nvmlDeviceGetCount()
            if not 0 <= index < count:
                raise HardwareUnavailable(f"GPU index {index} not in 0..{count - 1}")
            self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self.name = str(nvml.nvmlDeviceGetName(self.handle))
        except (nvml.NVMLError, HardwareUnavailable) as err:
            nvml.nvmlShutdown()
            raise HardwareUnavailable(f"NVML: {err}") from err
        self._open = True

    def error_reason(self, err: Exception, action: str) -> str:
        """A user-facing reason for an NVML error, naming the fix where there is one."""
        code = getattr(err, "value", None)
        if code == self.nvml.NVML_ERROR_NO_PERMISSION:
            return f"{action} needs root on {self.name} (run the server as root)"
        if code == self.nvml.NVML_ERROR_NOT_SUPPORTED:
            return f"{action} is not supported on {self.name}"
        return f"{action} failed on {self.name}: {err}"

    def close(self) -> None:
        """Shut NVML down (reference-counted by the library)."""
        if self._open:
            self._open = False
            self.nvml.nvmlShutdown()


class NvmlMeter(SamplingMeter):
    """GPU board energy: the total-energy counter (mJ, Volta+) where supported, else power samples.

    The counter is read at start and stop and differenced; without it a thread samples
    ``nvmlDeviceGetPowerUsage`` (mW) and integrates. Either covers the whole board, not one
    process.
    """

    def __init__(self, device: NvmlDevice, interval_s: float = 0.05) -> None:
        super().__init__(primary="gpu", interval_s=interval_s)
        self.device = device
        nvml = device.nvml
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(device.handle)
            self.use_counter = True
        except nvml.NVMLError as err:
            if getattr(err, "value", None) != nvml.NVML_ERROR_NOT_SUPPORTED:
                raise HardwareUnavailable(
                    device.error_reason(err, "reading energy")
                ) from err
            self.use_counter = False
        try:
            self.read_power_w()
        except HardwareUnavailable:
            if not self.use_counter:
                raise
        self.source = "nvml-counter" if self.use_counter else "nvml-sampled"
        self._start_mj: int | None = None

    def read_power_w(self) -> Mapping[str, float]:
        """Board power now (NVML reports mW)."""
        nvml = self.device.nvml
        try:
            return {"gpu": nvml.nvmlDeviceGetPowerUsage(self.device.handle) / 1000.0}
        except nvml.NVMLError as err:
            raise HardwareUnavailable(
                self.device.error_reason(err, "reading power")
            ) from err

    def _energy_mj(self) -> int | None:
        nvml = self.device.nvml
        try:
            return int(nvml.nvmlDeviceGetTotalEnergyConsumption(self.device.handle))
        except nvml.NVMLError as err:
            reason = self.device.error_reason(err, "reading energy")
            logger.warning("%s: %s; phase not measured", self.source, reason)
            return None

    def _begin(self) -> None:
        if self.use_counter:
            self._start_mj = self._energy_mj()
        else:
            super()._begin()

    def _end(self, duration_s: float) -> EnergyReading:
        if not self.use_counter:
            return super()._end(duration_s)
        end_mj = self._energy_mj()
        if self._start_mj is None or end_mj is None:
            return EnergyReading(
                self.source, False, duration_s, note="energy counter read failed"
            )
        joules = (end_mj - self._start_mj) / 1000.0
        return EnergyReading(self.source, True, duration_s, joules=joules, samples=2)

    def close(self) -> None:
        """Stop sampling and release NVML."""
        super().close()
        self.device.close()


class NvmlClock(ClockController):
    """Lock the graphics clock with ``nvmlDeviceSetGpuLockedClocks`` (``nvidia-smi -lgc``).

    The request snaps up to a step of ``nvmlDeviceGetSupportedGraphicsClocks`` at the memory
    clock in force. NVML cannot read back an earlier lock, so ``restore`` resets locked
    clocks to the driver's default (``nvidia-smi -rgc``). Needs root.
    """

    source = "nvml"

    def __init__(self, device: NvmlDevice) -> None:
        super().__init__()
        self.device = device

    def supported_hz(self) -> list[float]:
        """Graphics clock steps (Hz) at the memory clock in force."""
        nvml, handle = self.device.nvml, self.device.handle
        try:
            memory_mhz = list(nvml.nvmlDeviceGetSupportedMemoryClocks(handle))
            current_mem = nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)
            mem = current_mem if current_mem in memory_mhz else max(memory_mhz)
            return [
                m * _MHZ for m in nvml.nvmlDeviceGetSupportedGraphicsClocks(handle, mem)
            ]
        except nvml.NVMLError as err:
            raise HardwareUnavailable(
                self.device.error_reason(err, "listing clocks")
            ) from err
        except ValueError as err:  # max() of an empty list
            raise HardwareUnavailable(
                f"{self.device.name} reports no memory clocks"
            ) from err

    def _set(self, hz: float) -> float:
        nvml = self.device.nvml
        target_hz = snap_up(hz, self.supported_hz())
        mhz = int(round(target_hz / _MHZ))
        try:
            nvml.nvmlDeviceSetGpuLockedClocks(self.device.handle, mhz, mhz)
        except nvml.NVMLError as err:
            raise HardwareUnavailable(
                self.device.error_reason(err, "locking GPU clocks")
            ) from err
        return target_hz

    def _reset(self) -> None:
        nvml = self.device.nvml
        try:
            nvml.nvmlDeviceResetGpuLockedClocks(self.device.handle)
        except nvml.NVMLError as err:
            reason = self.device.error_reason(err, "resetting GPU clocks")
            raise HardwareUnavailable(reason) from err

    def current_hz(self) -> float | None:
        """The SM clock now."""
        nvml = self.device.nvml
        try:
            return (
                nvml.nvmlDeviceGetClockInfo(self.device.handle, nvml.NVML_CLOCK_SM)
                * _MHZ
            )
        except nvml.NVMLError:
            return None

    def close(self) -> None:
        """Restore the clock and release NVML."""
        super().close()
        self.device.close()

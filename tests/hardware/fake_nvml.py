"""FakeNVML: a stand-in for the `pynvml` module on machines without an NVIDIA GPU.

It follows the real module: the same function names and parameter names, the same units
(energy in mJ, power in mW, clocks in MHz), and errors raised as `pynvml.NVMLError` with
the real NVML error codes. A test checks the names against the installed `pynvml`.
"""

from __future__ import annotations

import pynvml

# Steps of an RTX 4090 as `nvidia-smi -q -d SUPPORTED_CLOCKS` lists them.
RTX4090_MEMORY_MHZ = (10501, 10251, 5001, 810, 405)
RTX4090_GRAPHICS_MHZ = tuple(range(3105, 209, -15))


class FakeNVML:
    """One fake GPU board with an energy counter, a power reading and lockable clocks.

    Parameters
    ----------
    library : bool
        False: ``nvmlInit`` fails as on a machine without the driver.
    gpus : int
        How many GPUs ``nvmlDeviceGetCount`` reports.
    energy_counter : bool
        False: ``nvmlDeviceGetTotalEnergyConsumption`` is NOT_SUPPORTED (pre-Volta boards).
    root : bool
        False: setting/resetting locked clocks fails with NO_PERMISSION.
    lock_supported : bool
        False: setting locked clocks is NOT_SUPPORTED.
    power_mw : int
        What ``nvmlDeviceGetPowerUsage`` returns.
    """

    NVMLError = pynvml.NVMLError
    NVML_ERROR_UNINITIALIZED = pynvml.NVML_ERROR_UNINITIALIZED
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
    NVML_ERROR_INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_CLOCK_GRAPHICS = pynvml.NVML_CLOCK_GRAPHICS
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM

    def __init__(
        self,
        *,
        library: bool = True,
        gpus: int = 1,
        energy_counter: bool = True,
        root: bool = True,
        lock_supported: bool = True,
        power_mw: int = 300_000,
    ) -> None:
        self.library, self.gpus, self.energy_counter = library, gpus, energy_counter
        self.root, self.lock_supported, self.power_mw = root, lock_supported, power_mw
        self.refcount = 0
        self.energy_mj = 123_456_789  # since driver load, as the real counter
        self.sm_mhz, self.mem_mhz = 2520, RTX4090_MEMORY_MHZ[0]
        self.locked_mhz: tuple[int, int] | None = None
        self.calls: list[str] = []

    # Test controls (not part of the NVML API).
    def advance(self, seconds: float) -> None:
        """Run the board at ``power_mw`` for ``seconds``: the energy counter grows."""
        self.energy_mj += int(self.power_mw * seconds)

    def _check(self, handle: object = None) -> None:
        if self.refcount <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if handle is not None and not (
            isinstance(handle, tuple) and handle[0] == "fake-gpu"
        ):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    # The NVML API (names and parameters as in pynvml).
    def nvmlInit(self) -> None:
        if not self.library:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self._check()
        self.refcount -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[str, int]:
        self._check()
        if not 0 <= index < self.gpus:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return ("fake-gpu", index)

    def nvmlDeviceGetName(self, handle: tuple[str, int]) -> str:
        self._check(handle)
        return "NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: tuple[str, int]) -> int:
        self._check(handle)
        if not self.energy_counter:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle: tuple[str, int]) -> int:
        self._check(handle)
        return self.power_mw

    def nvmlDeviceGetClockInfo(self, handle: tuple[str, int], type: int) -> int:  # noqa: A002
        self._check(handle)
        if type == pynvml.NVML_CLOCK_MEM:
            return self.mem_mhz
        return self.locked_mhz[1] if self.locked_mhz else self.sm_mhz

    def nvmlDeviceGetSupportedMemoryClocks(self, handle: tuple[str, int]) -> list[int]:
        self._check(handle)
        return list(RTX4090_MEMORY_MHZ)

    def nvmlDeviceGetSupportedGraphicsClocks(
        self, handle: tuple[str, int], memoryClockMHz: int
    ) -> list[int]:  # noqa: N803
        self._check(handle)
        if memoryClockMHz not in RTX4090_MEMORY_MHZ:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return [m for m in RTX4090_GRAPHICS_MHZ if memoryClockMHz > 810 or m <= 1500]

    def nvmlDeviceSetGpuLockedClocks(
        self, handle: tuple[str, int], minGpuClockMHz: int, maxGpuClockMHz: int
    ) -> None:  # noqa: N803
        self._check(handle)
        self.calls.append(f"set {minGpuClockMHz} {maxGpuClockMHz}")
        if not self.root:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        if not self.lock_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        self.locked_mhz = (minGpuClockMHz, maxGpuClockMHz)

    def nvmlDeviceResetGpuLockedClocks(self, handle: tuple[str, int]) -> None:
        self._check(handle)
        self.calls.append("reset")
        if not self.root:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        self.locked_mhz = None

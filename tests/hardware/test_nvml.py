"""Tests of the NVML meter and clock against FakeNVML, and of FakeNVML against pynvml."""

from __future__ import annotations

import inspect
import logging
import re
import time
from pathlib import Path

import pynvml
import pytest

import splitkd_flwr.hardware as hardware_pkg
from splitkd_flwr.hardware.meters import HardwareUnavailable
from splitkd_flwr.hardware.nvml import NvmlClock, NvmlDevice, NvmlMeter

from .fake_nvml import FakeNVML


def _api_names(obj: object) -> set[str]:
    return {n for n in dir(obj) if n.startswith(("nvml", "NVML"))}


def test_fake_follows_pynvml_names_signatures_and_codes() -> None:
    # Prepare
    fake = FakeNVML()

    # Assert: every NVML name the fake has exists in pynvml, with the same parameters and values
    for name in _api_names(fake):
        assert hasattr(pynvml, name), f"FakeNVML.{name} is not in pynvml"
        real, ours = getattr(pynvml, name), getattr(fake, name)
        if callable(real):
            assert list(inspect.signature(ours).parameters) == list(
                inspect.signature(real).parameters
            ), name
        elif isinstance(real, int):
            assert ours == real, name
    assert fake.NVMLError is pynvml.NVMLError


def test_code_calls_only_real_nvml_functions_the_fake_provides() -> None:
    # Prepare: every `nvml.<name>` in the hardware package
    source = "\n".join(
        p.read_text() for p in Path(hardware_pkg.__file__).parent.glob("*.py")
    )
    called = set(re.findall(r"\bnvml\.((?:nvml|NVML)\w+)", source))

    # Assert
    assert "nvmlDeviceSetGpuLockedClocks" in called  # the scan sees the calls
    assert called <= set(dir(pynvml)), called - set(dir(pynvml))
    assert called <= _api_names(FakeNVML()), called - _api_names(FakeNVML())


def test_fake_errors_are_pynvml_errors_with_real_codes() -> None:
    fake = FakeNVML(root=False)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NoPermission) as err:
        fake.nvmlDeviceSetGpuLockedClocks(handle, 1500, 1500)
    assert err.value.value == pynvml.NVML_ERROR_NO_PERMISSION


def test_energy_from_counter_differences() -> None:
    # Prepare: a 300 W board
    fake = FakeNVML(power_mw=300_000)
    meter = NvmlMeter(NvmlDevice(0, fake))

    # Execute
    meter.start()
    fake.advance(2.0)  # the board spends 600 J
    reading = meter.stop()

    # Assert
    assert meter.source == "nvml-counter" and reading.measured
    assert reading.joules == pytest.approx(600.0)
    assert reading.samples == 2


def test_sampled_power_without_energy_counter() -> None:
    # Prepare: a pre-Volta board, 250 W
    fake = FakeNVML(energy_counter=False, power_mw=250_000)
    meter = NvmlMeter(NvmlDevice(0, fake), interval_s=0.005)

    # Execute
    with meter.measure() as m:
        time.sleep(0.05)

    # Assert: constant power integrates exactly to P times the sampled span
    assert meter.source == "nvml-sampled"
    assert m.reading is not None and m.reading.measured and m.reading.samples >= 3
    assert m.reading.joules == pytest.approx(250.0 * m.reading.duration_s)


def test_missing_library_or_gpu_is_unavailable() -> None:
    with pytest.raises(HardwareUnavailable, match="NVML Shared Library Not Found"):
        NvmlDevice(0, FakeNVML(library=False))
    fake = FakeNVML(gpus=1)
    with pytest.raises(HardwareUnavailable, match="GPU index 1"):
        NvmlDevice(1, fake)
    assert fake.refcount == 0  # shut down again


def test_clock_snaps_up_to_supported_step_and_resets_on_exit() -> None:
    # Prepare: steps are 15 MHz apart (..., 1500, 1515, ...)
    fake = FakeNVML()

    # Execute
    with NvmlClock(NvmlDevice(0, fake)) as clock:
        setting = clock.apply(1.501e9)
        locked_inside = fake.locked_mhz

    # Assert
    assert (
        setting.applied
        and setting.applied_hz == 1515e6
        and setting.requested_hz == 1.501e9
    )
    assert setting.current_hz == 1515e6
    assert locked_inside == (1515, 1515)
    assert fake.locked_mhz is None and fake.calls[-1] == "reset"


def test_clock_resets_on_exception_and_ctrl_c() -> None:
    fake = FakeNVML()
    clock = NvmlClock(NvmlDevice(0, fake))
    for exc in (RuntimeError("round failed"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with clock.locked(1.0e9):
                assert fake.locked_mhz == (1005, 1005)
                raise exc
        assert fake.locked_mhz is None


def test_no_permission_warns_once_and_reports_not_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: not root
    fake = FakeNVML(root=False)
    clock = NvmlClock(NvmlDevice(0, fake))

    # Execute
    with caplog.at_level(logging.WARNING):
        settings = [clock.apply(hz) for hz in (1.2e9, 1.5e9, 1.8e9)]
        clock.restore()

    # Assert
    assert all(not s.applied and s.applied_hz is None for s in settings)
    assert "needs root" in settings[0].reason
    assert settings[0].to_metrics() == {
        "clock-applied": 0,
        "clock-requested-hz": 1.2e9,
        "clock-current-hz": 2520e6,
    }
    assert caplog.text.count("GPU clock not applied") == 1
    assert "reset" not in fake.calls  # nothing was locked, so nothing to undo


def test_lock_not_supported_reports_reason() -> None:
    setting = NvmlClock(NvmlDevice(0, FakeNVML(lock_supported=False))).apply(1.5e9)
    assert not setting.applied and "not supported" in setting.reason


def test_counter_failing_mid_run_reports_not_measured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: the counter works when the meter is built, then stops answering
    fake = FakeNVML()
    meter = NvmlMeter(NvmlDevice(0, fake))
    fake.energy_counter = False

    # Execute
    with caplog.at_level(logging.WARNING), meter.measure() as m:
        fake.advance(1.0)

    # Assert
    assert m.reading is not None and not m.reading.measured and m.reading.joules is None
    assert "reading energy is not supported" in caplog.text

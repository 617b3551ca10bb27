"""Tests of the per-round HardwareMonitor: phase sums, Flower-ready metrics, clock restore."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, MetricRecord

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.hardware.monitor import HardwareMonitor

from .fake_nvml import FakeNVML


def test_round_metrics_sum_phases_and_carry_the_clock(tmp_path: Path) -> None:
    # Prepare: a 200 W GPU
    fake = FakeNVML(power_mw=200_000)
    monitor = HardwareMonitor.from_config(
        "auto", "auto", sysfs_root=tmp_path, nvml=fake
    )

    # Execute: a round with three server steps of 0.5 s each
    setting = monitor.apply_clock(1.2e9)
    for _ in range(3):
        with monitor.measure("server-compute"):
            fake.advance(0.5)
    metrics = monitor.metrics()

    # Assert
    assert setting.applied
    assert metrics["server-compute-measured-energy-j"] == pytest.approx(300.0)
    assert metrics["server-compute-energy-measured"] == 1
    assert metrics["clock-applied"] == 1 and metrics["clock-applied-hz"] == 1.2e9
    assert monitor.labels()["energy-source"] == "nvml-counter"
    MetricRecord(metrics)  # Flower accepts them as they are
    ConfigRecord(monitor.labels())
    assert (
        "server-compute-measured-energy-j" not in monitor.metrics()
    )  # reset per round

    # Execute / Assert: closing gives the clock back
    monitor.close()
    assert fake.locked_mhz is None and fake.refcount == 0


def test_unmeasured_round_says_so(tmp_path: Path) -> None:
    with HardwareMonitor.from_config("none", "none", sysfs_root=tmp_path) as monitor:
        monitor.apply_clock(1e9)
        with monitor.measure("device-compute"):
            pass
        metrics = monitor.metrics()
    assert metrics["device-compute-energy-measured"] == 0
    assert "device-compute-measured-energy-j" not in metrics
    assert metrics["clock-applied"] == 0 and "clock-applied-hz" not in metrics
    MetricRecord(metrics)


def test_phase_measured_even_when_the_body_raises(tmp_path: Path) -> None:
    fake = FakeNVML()
    monitor = HardwareMonitor.from_config(
        "nvml", "none", sysfs_root=tmp_path, nvml=fake
    )
    with pytest.raises(RuntimeError):
        with monitor.measure("server-compute"):
            fake.advance(1.0)
            raise RuntimeError("bad frame")
    assert monitor.metrics()["server-compute-measured-energy-j"] == pytest.approx(300.0)


def test_bad_phase_name_is_rejected() -> None:
    with pytest.raises(ConfigError, match="hyphenated"):
        with HardwareMonitor().measure("Server Compute"):
            pass

"""Tests of the meter interface, the null meter and sampling integration."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping

import pytest

from splitkd_flwr.hardware.meters import (
    EnergyReading,
    NullMeter,
    SamplingMeter,
    integrate_trapezoid,
)


class RampMeter(SamplingMeter):
    """Power rising 10 W per second of a fake clock that ticks 0.1 s per reading."""

    source = "ramp"

    def __init__(self, fail_after: int | None = None) -> None:
        ticks = itertools.count()
        super().__init__(
            primary="total", interval_s=0.001, clock=lambda: 0.1 * next(ticks)
        )
        self.fail_after = fail_after
        self.reads = 0

    def read_power_w(self) -> Mapping[str, float]:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise OSError(5, "Input/output error")
        t = 0.1 * (self.reads - 1)  # the clock reading taken just before this sample
        return {"total": 10.0 * t, "gpu": 4.0}


def test_trapezoid_exact_for_linear_power() -> None:
    # Prepare: 0 -> 10 W over 2 s, unevenly sampled
    times = [0.0, 0.5, 0.7, 2.0]
    watts = [5.0 * t for t in times]

    # Execute
    joules = integrate_trapezoid(times, watts)

    # Assert
    assert joules == pytest.approx(10.0)


def test_trapezoid_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="3 times but 2"):
        integrate_trapezoid([0.0, 1.0, 2.0], [1.0, 2.0])


def test_sampling_thread_integrates_every_sample() -> None:
    # Prepare
    meter = RampMeter()

    # Execute
    meter.start()
    time.sleep(0.05)  # the thread takes a few samples
    reading = meter.stop()

    # Assert: linear power 10 t integrates to 5 T^2, T the last sample's time
    last_t = 0.1 * (reading.samples - 1)
    assert reading.measured and reading.source == "ramp"
    assert reading.samples >= 3
    assert reading.joules == pytest.approx(5.0 * last_t**2)
    assert reading.rails_j == {"gpu": pytest.approx(4.0 * last_t)}
    assert reading.duration_s == pytest.approx(last_t)  # the span of the samples


def test_sensor_failure_reports_not_measured(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: the sensor fails on its third read
    meter = RampMeter(fail_after=2)

    # Execute
    with caplog.at_level(logging.WARNING), meter.measure() as m:
        time.sleep(0.05)

    # Assert
    assert m.reading is not None
    assert not m.reading.measured and m.reading.joules is None
    assert "sampling failed" in m.reading.note and "sampling failed" in caplog.text


def test_null_meter_says_not_measured_never_zero() -> None:
    # Execute
    with NullMeter("no sensor here").measure() as m:
        time.sleep(0.01)

    # Assert
    reading = m.reading
    assert reading is not None
    assert (
        reading.measured is False
        and reading.joules is None
        and reading.mean_power_w is None
    )
    assert reading.duration_s >= 0.01
    metrics = reading.to_metrics("server-")
    assert metrics["server-energy-measured"] == 0
    assert not any(
        key.endswith("-energy-j") or key.endswith("-power-w") for key in metrics
    )
    assert reading.to_labels() == {
        "energy-source": "none",
        "energy-note": "no sensor here",
    }


def test_reading_metrics_and_sum() -> None:
    # Prepare
    a = EnergyReading(
        "jetson-ina3221", True, 2.0, joules=10.0, samples=3, rails_j={"gpu": 4.0}
    )
    b = EnergyReading(
        "jetson-ina3221", True, 3.0, joules=20.0, samples=4, rails_j={"gpu": 6.0}
    )

    # Execute
    total = a + b
    metrics = total.to_metrics("device-compute-")

    # Assert
    assert metrics == {
        "device-compute-energy-measured": 1,
        "device-compute-measured-duration-s": 5.0,
        "device-compute-measured-energy-j": 30.0,
        "device-compute-measured-samples": 7,
        "device-compute-measured-mean-power-w": 6.0,
        "device-compute-measured-gpu-energy-j": 10.0,
    }
    assert not (
        a + EnergyReading("none", False, 1.0)
    ).measured  # unmeasured part spoils the sum


def test_start_stop_misuse_raises() -> None:
    meter = NullMeter()
    with pytest.raises(RuntimeError, match="without start"):
        meter.stop()
    meter.start()
    with pytest.raises(RuntimeError, match="twice"):
        meter.start()

"""Tests of meter and clock auto-detection and of the name override."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.hardware.clocks import NullClock
from splitkd_flwr.hardware.detect import detect_clock, detect_meter
from splitkd_flwr.hardware.jetson import JetsonClock, JetsonMeter
from splitkd_flwr.hardware.meters import NullMeter
from splitkd_flwr.hardware.nvml import NvmlClock, NvmlMeter

from .fake_nvml import FakeNVML
from .fake_sysfs import ORIN_GPU_HZ, ORIN_NX, make_devfreq, make_rails


@pytest.fixture
def jetson_root(tmp_path: Path) -> Path:
    make_rails(tmp_path, ORIN_NX)
    make_devfreq(tmp_path, "17000000.ga10b", ORIN_GPU_HZ)
    return tmp_path


def test_auto_prefers_nvml_when_a_gpu_is_there(jetson_root: Path) -> None:
    fake = FakeNVML()
    assert isinstance(
        detect_meter("auto", sysfs_root=jetson_root, nvml=fake), NvmlMeter
    )
    assert isinstance(
        detect_clock("auto", sysfs_root=jetson_root, nvml=fake), NvmlClock
    )


def test_auto_picks_jetson_without_nvml(jetson_root: Path) -> None:
    no_nvml = FakeNVML(library=False)
    assert isinstance(
        detect_meter("auto", sysfs_root=jetson_root, nvml=no_nvml), JetsonMeter
    )
    assert isinstance(
        detect_clock("auto", sysfs_root=jetson_root, nvml=no_nvml), JetsonClock
    )


def test_auto_falls_back_to_null_with_reasons(tmp_path: Path) -> None:
    no_nvml = FakeNVML(library=False)
    meter = detect_meter("auto", sysfs_root=tmp_path, nvml=no_nvml)
    clock = detect_clock("auto", sysfs_root=tmp_path, nvml=no_nvml)
    assert isinstance(meter, NullMeter) and isinstance(clock, NullClock)
    assert "NVML" in meter.reason and "INA3221" in meter.reason
    assert "devfreq" in clock.reason


def test_auto_skips_nvml_without_gpus(jetson_root: Path) -> None:
    assert isinstance(
        detect_meter("auto", sysfs_root=jetson_root, nvml=FakeNVML(gpus=0)), JetsonMeter
    )


def test_name_overrides_detection(jetson_root: Path) -> None:
    fake = FakeNVML()
    assert isinstance(
        detect_meter("jetson", sysfs_root=jetson_root, nvml=fake), JetsonMeter
    )
    assert isinstance(
        detect_meter("none", sysfs_root=jetson_root, nvml=fake), NullMeter
    )
    assert isinstance(
        detect_clock("jetson", sysfs_root=jetson_root, nvml=fake), JetsonClock
    )
    assert isinstance(
        detect_clock("none", sysfs_root=jetson_root, nvml=fake), NullClock
    )


def test_named_backend_that_is_absent_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="energy-meter = 'nvml' but it is not usable here"
    ):
        detect_meter("nvml", sysfs_root=tmp_path, nvml=FakeNVML(library=False))
    with pytest.raises(ConfigError, match="gpu-clock = 'jetson'"):
        detect_clock("jetson", sysfs_root=tmp_path, nvml=FakeNVML())


def test_unknown_name_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match="one of auto, nvml, jetson, none, got 'rapl'"
    ):
        detect_meter("rapl")

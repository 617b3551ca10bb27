"""Tests of the Jetson rails meter and devfreq clock against fake sysfs trees."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from splitkd_flwr.hardware.jetson import (
    JetsonClock,
    JetsonMeter,
    find_gpu_devfreq,
    find_rails,
)
from splitkd_flwr.hardware.meters import HardwareUnavailable

from .fake_sysfs import (
    AGX_ORIN,
    AGX_XAVIER,
    ORIN_GPU_HZ,
    ORIN_NX,
    XAVIER_GPU_HZ,
    XAVIER_NX,
    Layout,
    devfreq_kernel,
    make_devfreq,
    make_rails,
    set_rail,
)


def _watts(layout: Layout, label: str) -> float:
    return next(
        mv * ma / 1e6
        for chans in layout.values()
        for lab, mv, ma in chans
        if lab == label
    )


def _all_watts(layout: Layout) -> float:
    return sum(
        mv * ma / 1e6
        for chans in layout.values()
        for lab, mv, ma in chans
        if lab != "NC"
    )


@pytest.mark.parametrize(
    ("layout", "total_rail", "gpu_rail"),
    [
        (ORIN_NX, "VDD_IN", "VDD_CPU_GPU_CV"),
        (AGX_ORIN, None, "VDD_GPU_SOC"),
        (XAVIER_NX, "VDD_IN", "VDD_CPU_GPU_CV"),
        (AGX_XAVIER, None, "GPU"),
    ],
    ids=["orin-nx", "agx-orin", "xavier-nx", "agx-xavier"],
)
def test_rail_parsing_per_layout(
    tmp_path: Path, layout: Layout, total_rail: str | None, gpu_rail: str
) -> None:
    # Prepare
    root = make_rails(tmp_path, layout)

    # Execute
    rails = find_rails(root)
    meter = JetsonMeter(root)
    power = meter.read_power_w()

    # Assert: every connected channel, mV x mA, the right rails picked
    labels = {lab for chans in layout.values() for lab, _, _ in chans if lab != "NC"}
    assert set(rails) == labels
    assert meter.total_rail == total_rail and meter.gpu_rail == gpu_rail
    expected_total = _watts(layout, total_rail) if total_rail else _all_watts(layout)
    assert power["total"] == pytest.approx(expected_total)
    assert power["gpu"] == pytest.approx(_watts(layout, gpu_rail))


def test_meter_integrates_rails_over_a_phase(tmp_path: Path) -> None:
    # Prepare: AGX Xavier, no input rail (the total is the sum)
    root = make_rails(tmp_path, AGX_XAVIER)
    meter = JetsonMeter(root, interval_s=0.005)

    # Execute
    with meter.measure() as m:
        time.sleep(0.05)

    # Assert
    reading = m.reading
    assert (
        reading is not None and reading.measured and reading.source == "jetson-ina3221"
    )
    assert reading.joules == pytest.approx(_all_watts(AGX_XAVIER) * reading.duration_s)
    assert reading.rails_j["gpu"] == pytest.approx(
        _watts(AGX_XAVIER, "GPU") * reading.duration_s
    )
    assert reading.note.startswith("total = sum of rails") and "SYS5V" in reading.note


def test_meter_follows_a_load_change(tmp_path: Path) -> None:
    # Prepare
    root = make_rails(tmp_path, ORIN_NX)
    meter = JetsonMeter(root)
    before = meter.read_power_w()["total"]

    # Execute: the input current doubles
    set_rail(root, "VDD_IN", 2400)

    # Assert
    assert meter.read_power_w()["total"] == pytest.approx(2 * before)


def test_no_rails_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(HardwareUnavailable, match="no INA3221 rails"):
        JetsonMeter(tmp_path)


@pytest.mark.parametrize(
    ("node", "steps"),
    [("17000000.ga10b", ORIN_GPU_HZ), ("17000000.gv11b", XAVIER_GPU_HZ)],
    ids=["orin", "xavier"],
)
def test_devfreq_snap_and_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node: str, steps: list[int]
) -> None:
    # Prepare
    node_dir = make_devfreq(tmp_path, node, steps)
    writes = devfreq_kernel(monkeypatch, node_dir)
    clock = JetsonClock(tmp_path / "class/devfreq")
    request = steps[3] + 1  # just above a step: snaps up to the next one

    # Execute
    with clock.locked(request) as setting:
        pinned = (
            (node_dir / "min_freq").read_text(),
            (node_dir / "max_freq").read_text(),
        )

    # Assert
    assert clock.path == node_dir
    assert (
        setting.applied
        and setting.applied_hz == steps[4]
        and setting.current_hz == steps[4]
    )
    assert pinned == (str(steps[4]), str(steps[4]))
    assert (node_dir / "min_freq").read_text().strip() == str(steps[0])
    assert (node_dir / "max_freq").read_text().strip() == str(steps[-1])
    assert len(writes) == 4  # kernel rule min <= max held at every write


def test_devfreq_raising_then_restoring_keeps_min_below_max(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: capped low (as nvpmodel may leave it), then a request above the cap
    node_dir = make_devfreq(tmp_path, "17000000.ga10b", ORIN_GPU_HZ)
    (node_dir / "min_freq").write_text(str(ORIN_GPU_HZ[0]))
    (node_dir / "max_freq").write_text(str(ORIN_GPU_HZ[2]))
    writes = devfreq_kernel(monkeypatch, node_dir)
    clock = JetsonClock(tmp_path / "class/devfreq", node="17000000.ga10b")

    # Execute
    with pytest.raises(RuntimeError):
        with clock.locked(1.3e9):
            raise RuntimeError("round failed")

    # Assert: max raised before min on the way up, min lowered before max on the way back
    assert writes == [
        f"max_freq={ORIN_GPU_HZ[-1]}",
        f"min_freq={ORIN_GPU_HZ[-1]}",
        f"min_freq={ORIN_GPU_HZ[0]}",
        f"max_freq={ORIN_GPU_HZ[2]}",
    ]


def test_devfreq_without_root_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    node_dir = make_devfreq(tmp_path, "17000000.gv11b", XAVIER_GPU_HZ)
    devfreq_kernel(monkeypatch, node_dir, root=False)
    clock = JetsonClock(tmp_path / "class/devfreq")

    # Execute
    with caplog.at_level(logging.WARNING):
        first, second = clock.apply(9e8), clock.apply(1e9)
        clock.restore()

    # Assert
    assert not first.applied and not second.applied and "needs root" in first.reason
    assert first.current_hz == XAVIER_GPU_HZ[-1]
    assert caplog.text.count("GPU clock not applied") == 1
    assert (node_dir / "max_freq").read_text().strip() == str(XAVIER_GPU_HZ[-1])


def test_no_gpu_devfreq_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "devfreq/ff000000.other").mkdir(parents=True)
    with pytest.raises(HardwareUnavailable, match="no GPU devfreq node"):
        find_gpu_devfreq(tmp_path / "devfreq")

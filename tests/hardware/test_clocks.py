"""Tests of the clock controller contract: snapping, nesting, atexit, the null clock."""

from __future__ import annotations

import atexit
import logging

import pytest

from splitkd_flwr.hardware.clocks import (
    ClockController,
    ClockSetting,
    NullClock,
    snap_up,
)


class RecordingClock(ClockController):
    """A knob that records what it was asked (tests the base class's bookkeeping)."""

    source = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []

    def _set(self, hz: float) -> float:
        self.log.append(f"set {hz:.0f}")
        return hz

    def _reset(self) -> None:
        self.log.append("reset")

    def current_hz(self) -> float | None:
        return None


def test_snap_up_picks_next_step_or_the_top() -> None:
    steps = [300.0, 600.0, 900.0]
    assert snap_up(601.0, steps) == 900.0
    assert snap_up(600.0, steps) == 600.0
    assert snap_up(10.0, steps) == 300.0
    assert snap_up(5000.0, steps) == 900.0
    with pytest.raises(ValueError, match="no supported clock steps"):
        snap_up(1.0, [])


def test_nested_locks_return_to_the_previous_request() -> None:
    clock = RecordingClock()
    with clock.locked(1e9):
        with clock.locked(2e9):
            pass
        assert clock.log == ["set 1000000000", "set 2000000000", "set 1000000000"]
    assert clock.log[-1] == "reset"


def test_held_lock_is_registered_with_atexit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(atexit, "unregister", registered.remove)
    clock = RecordingClock()

    # Execute / Assert: registered once while held, gone after restore
    clock.apply(1e9)
    clock.apply(1.2e9)
    assert registered == [clock.restore]
    clock.restore()
    assert registered == [] and clock.log[-1] == "reset"


def test_apply_none_releases_and_reports_not_requested() -> None:
    clock = RecordingClock()
    clock.apply(1e9)
    setting = clock.apply(None)
    assert clock.log == ["set 1000000000", "reset"]
    assert setting == ClockSetting(
        "recording", None, None, False, "not requested", None
    )
    assert setting.to_metrics() == {"clock-applied": 0}


def test_bad_clock_raises() -> None:
    with pytest.raises(ValueError, match="> 0 Hz"):
        RecordingClock().apply(0.0)


def test_null_clock_reports_not_applied_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = NullClock("no GPU here")
    with caplog.at_level(logging.WARNING):
        settings = [clock.apply(1e9), clock.apply(1e9)]
    assert [s.applied for s in settings] == [False, False]
    assert settings[0].reason == "no GPU here"
    assert settings[0].to_labels() == {
        "clock-source": "none",
        "clock-reason": "no GPU here",
    }
    assert caplog.text.count("no GPU here") == 1

"""GPU clock control: apply a planner's clock, report whether it took, restore on exit."""

from __future__ import annotations

import atexit
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from splitkd_flwr.hardware.meters import HardwareUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClockSetting:
    """What became of a requested clock: the round's metrics record it as is."""

    source: str  # "nvml", "jetson-devfreq", "none"
    requested_hz: float | None  # None: the planner left the clock alone
    applied_hz: float | None  # the supported step actually locked, None if not applied
    applied: bool
    reason: str = ""  # why not applied (no permission, not supported, not requested)
    # The clock read back after the attempt, where readable
    current_hz: float | None = None

    def to_metrics(self) -> dict[str, int | float]:
        """Flower ``MetricRecord``-ready figures; unknown clocks are left out, not zeroed."""
        out: dict[str, int | float] = {"clock-applied": int(self.applied)}
        for key, value in (
            ("clock-requested-hz", self.requested_hz),
            ("clock-applied-hz", self.applied_hz),
            ("clock-current-hz", self.current_hz),
        ):
            if value is not None:
                out[key] = float(value)
        return out

    def to_labels(self) -> dict[str, str]:
        """Text figures for a Flower ``ConfigRecord``."""
        return {"clock-source": self.source, "clock-reason": self.reason}


def snap_up(requested: float, supported: Sequence[float]) -> float:
    """The smallest supported step at or above ``requested``, else the highest one.

    Rounding up keeps a delay bound the planner met at ``requested``.
    """
    if not supported:
        raise ValueError("no supported clock steps to snap to")
    above = [s for s in supported if s >= requested]
    return min(above) if above else max(supported)


class ClockController(ABC):
    """Lock the GPU clock to a planner's choice and give it back.

    ``apply(hz)`` locks (``None`` releases); ``restore()`` gives back what was in force
    before the first ``apply``; ``with ctl.locked(hz):`` restores the previous request on
    exit, also on errors and Ctrl-C. A lock still held at interpreter exit is released by
    an ``atexit`` hook. Where the knob cannot be turned (no permission, not supported) it
    warns once per reason and reports ``applied=False``; the run goes on.
    """

    source = "none"

    def __init__(self) -> None:
        self._warned: set[str] = set()
        self._held = False
        self._request_hz: float | None = None

    @abstractmethod
    def _set(self, hz: float) -> float:
        """Lock the clock near ``hz`` and return the step locked.

        Raise ``HardwareUnavailable`` with the reason where it cannot, leaving the
        setting as it was (a backend undoes its own half-done writes).
        """

    @abstractmethod
    def _reset(self) -> None:
        """Give back the setting in force before the first ``_set``."""

    @abstractmethod
    def current_hz(self) -> float | None:
        """The clock in force now, ``None`` where unreadable."""

    def _warn_once(self, reason: str) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning(
                "GPU clock not applied (%s): %s; the run goes on at the current clock",
                self.source,
                reason,
            )

    def _read_current(self) -> float | None:
        try:
            return self.current_hz()
        except (OSError, ValueError, HardwareUnavailable):
            return None

    def apply(self, hz: float | None) -> ClockSetting:
        """Lock the clock at the supported step nearest above ``hz`` (``None``: release)."""
        self._request_hz = hz
        if hz is None:
            self.restore()
            current = self._read_current()
            return ClockSetting(
                self.source, None, None, False, "not requested", current
            )
        if hz <= 0:
            raise ValueError(f"clock must be > 0 Hz, got {hz}")
        try:
            applied_hz = self._set(hz)
        except HardwareUnavailable as err:
            self._warn_once(str(err))
            return ClockSetting(
                self.source, hz, None, False, str(err), self._read_current()
            )
        if not self._held:
            self._held = True
            atexit.register(self.restore)
        return ClockSetting(self.source, hz, applied_hz, True, "", self._read_current())

    def restore(self) -> None:
        """Give back the clock setting in force before the first ``apply``."""
        self._request_hz = None
        if not self._held:
            return
        self._held = False
        atexit.unregister(self.restore)
        try:
            self._reset()
        except HardwareUnavailable as err:
            self._warn_once(f"restore failed: {err}")

    @contextmanager
    def locked(self, hz: float | None) -> Iterator[ClockSetting]:
        """Hold ``hz`` for the body; then return to the previous request (or restore)."""
        previous_hz = self._request_hz
        try:
            yield self.apply(hz)
        finally:
            if previous_hz is None:
                self.restore()
            else:
                self.apply(previous_hz)

    def close(self) -> None:
        """Restore the clock."""
        self.restore()

    def __enter__(self) -> ClockController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


class NullClock(ClockController):
    """No clock knob here (CPU-only machine): every request is reported as not applied."""

    source = "none"

    def __init__(self, reason: str = "no GPU clock control on this machine") -> None:
        super().__init__()
        self.reason = reason

    def _set(self, hz: float) -> float:
        raise HardwareUnavailable(self.reason)

    def _reset(self) -> None:
        pass

    def current_hz(self) -> float | None:
        """Unknown."""
        return None

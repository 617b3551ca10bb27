"""Energy meters: one interface (start/stop around a phase) over NVML, Jetson rails or nothing."""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from splitkd_flwr.core.errors import SplitKDError

logger = logging.getLogger(__name__)


class HardwareUnavailable(SplitKDError):
    """A meter or clock knob cannot be used here (no library, no sensor, no permission)."""


@dataclass(frozen=True)
class EnergyReading:
    """The energy of one measured phase.

    ``joules`` is the primary scope of the meter (the whole GPU board for NVML, the module's
    input rail on a Jetson); ``rails_j`` adds the other rails it read (e.g. ``gpu``). A meter
    that cannot measure reports ``measured=False`` and ``joules=None``, never a zero.
    """

    source: str  # "nvml-counter", "nvml-sampled", "jetson-ina3221", "none"
    measured: bool
    duration_s: (
        float  # wall time of the phase (sampled: the samples' span); always measured
    )
    joules: float | None = None
    samples: int = 0
    rails_j: dict[str, float] = field(default_factory=dict)
    note: str = ""  # why not measured, or which rails the primary scope sums

    @property
    def mean_power_w(self) -> float | None:
        """Mean power over the phase, ``None`` where not measured or of zero length."""
        if self.joules is None or self.duration_s <= 0.0:
            return None
        return self.joules / self.duration_s

    def __add__(self, other: EnergyReading) -> EnergyReading:
        """Sum two readings of the same meter (a phase entered once per mini-batch)."""
        joules = (
            None
            if self.joules is None or other.joules is None
            else self.joules + other.joules
        )
        rails = set(self.rails_j) & set(other.rails_j) if joules is not None else set()
        return EnergyReading(
            source=self.source,
            measured=self.measured and other.measured and joules is not None,
            duration_s=self.duration_s + other.duration_s,
            joules=joules,
            samples=self.samples + other.samples,
            rails_j={r: self.rails_j[r] + other.rails_j[r] for r in sorted(rails)},
            note=self.note or other.note,
        )

    def to_metrics(self, prefix: str = "") -> dict[str, int | float]:
        """Flower ``MetricRecord``-ready figures, keys ``<prefix>measured-energy-j`` etc.

        Energy keys are left out where nothing was measured; ``energy-measured`` says which.
        """
        out: dict[str, int | float] = {
            f"{prefix}energy-measured": int(self.measured),
            f"{prefix}measured-duration-s": self.duration_s,
        }
        if self.measured and self.joules is not None:
            out[f"{prefix}measured-energy-j"] = self.joules
            out[f"{prefix}measured-samples"] = self.samples
            if self.mean_power_w is not None:
                out[f"{prefix}measured-mean-power-w"] = self.mean_power_w
            for rail, joules in self.rails_j.items():
                out[f"{prefix}measured-{rail}-energy-j"] = joules
        return out

    def to_labels(self, prefix: str = "") -> dict[str, str]:
        """Text figures for a Flower ``ConfigRecord``: the meter's name and its note."""
        return {
            f"{prefix}energy-source": self.source,
            f"{prefix}energy-note": self.note,
        }


class EnergyMeter(ABC):
    """Measure the energy of a phase: ``start()`` ... ``stop() -> EnergyReading``.

    One phase at a time per meter. ``with meter.measure() as m: ...`` sets ``m.reading``
    on exit, also when the body raises.
    """

    source = "none"

    def __init__(self) -> None:
        self._t0: float | None = None

    def start(self) -> None:
        """Begin a phase."""
        if self._t0 is not None:
            raise RuntimeError(
                f"{type(self).__name__}: start() called twice without stop()"
            )
        self._t0 = time.monotonic()
        try:
            self._begin()
        except BaseException:
            self._t0 = None
            raise

    def stop(self) -> EnergyReading:
        """End the phase begun by ``start()`` and return its reading."""
        if self._t0 is None:
            raise RuntimeError(f"{type(self).__name__}: stop() called without start()")
        duration_s = time.monotonic() - self._t0
        self._t0 = None
        return self._end(duration_s)

    @contextmanager
    def measure(self) -> Iterator[Measurement]:
        """Measure the body of a ``with`` block."""
        holder = Measurement()
        self.start()
        try:
            yield holder
        finally:
            holder.reading = self.stop()

    def close(self) -> None:
        """Release the sensor (threads, library handles)."""

    @abstractmethod
    def _begin(self) -> None:
        """Take the opening reading of a phase."""

    @abstractmethod
    def _end(self, duration_s: float) -> EnergyReading:
        """Take the closing reading and build the phase's reading."""


@dataclass
class Measurement:
    """Filled by ``EnergyMeter.measure`` when its block exits."""

    reading: EnergyReading | None = None


class NullMeter(EnergyMeter):
    """No energy sensor here: every reading says "not measured" (never a fake zero)."""

    source = "none"

    def __init__(self, reason: str = "no energy meter on this machine") -> None:
        super().__init__()
        self.reason = reason

    def _begin(self) -> None:
        pass

    def _end(self, duration_s: float) -> EnergyReading:
        return EnergyReading(
            self.source, measured=False, duration_s=duration_s, note=self.reason
        )


def integrate_trapezoid(times_s: list[float], watts: list[float]) -> float:
    """Joules from power samples at (increasing) times, by the trapezoidal rule."""
    if len(times_s) != len(watts):
        raise ValueError(f"{len(times_s)} times but {len(watts)} power samples")
    return sum(
        0.5 * (watts[i] + watts[i + 1]) * (times_s[i + 1] - times_s[i])
        for i in range(len(times_s) - 1)
    )


class SamplingMeter(EnergyMeter):
    """Integrate power read by a background thread every ``interval_s`` over a phase.

    Subclasses give ``read_power_w() -> {rail: watts}`` and name the ``primary`` rail. A
    sample is also taken at the very start and end, so a phase shorter than one interval
    still integrates the two edge samples; the reading's ``duration_s`` is the span of the
    samples, so its mean power is the mean of what was integrated.
    """

    def __init__(
        self,
        primary: str,
        interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if interval_s <= 0.0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.primary = primary
        self.interval_s = interval_s
        self._clock = clock
        self._samples: list[tuple[float, Mapping[str, float]]] = []
        self._error: Exception | None = None
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def read_power_w(self) -> Mapping[str, float]:
        """Instantaneous power per rail in watts; must contain ``self.primary``."""

    def _sample(self) -> None:
        try:
            with (
                self._lock
            ):  # a time and its reading stay a pair across the two threads
                self._samples.append((self._clock(), self.read_power_w()))
        except (OSError, ValueError, SplitKDError) as err:  # a sensor gone mid-phase
            self._error = err
            self._stop_event.set()

    def _loop(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self._sample()

    def _begin(self) -> None:
        self._samples, self._error = [], None
        self._stop_event.clear()
        self._sample()
        self._thread = threading.Thread(
            target=self._loop, name=f"{self.source}-sampler", daemon=True
        )
        self._thread.start()

    def _end(self, duration_s: float) -> EnergyReading:
        self._stop_event.set()
        if self._error is None:
            self._sample()  # before the join, which may wait on a busy machine
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            note = f"sampling failed: {self._error}"
            logger.warning("%s: %s; phase not measured", self.source, note)
            return EnergyReading(self.source, False, duration_s, note=note)
        # the thread's last may trail
        samples = sorted(self._samples, key=lambda sample: sample[0])
        times = [t for t, _ in samples]
        rails_j = {
            rail: integrate_trapezoid(times, [p[rail] for _, p in samples])
            for rail in samples[0][1]
        }
        joules = rails_j.pop(self.primary)
        # The samples bracket the phase; their span is the time base of the energy.
        span_s = times[-1] - times[0]
        return EnergyReading(
            self.source,
            True,
            span_s,
            joules=joules,
            samples=len(times),
            rails_j=rails_j,
        )

    def close(self) -> None:
        """Stop the sampling thread if a phase is still open."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

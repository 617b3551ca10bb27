"""Vehicle trajectories around the base station: a seeded Manhattan street grid, or a fixed route."""

from __future__ import annotations

from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from splitkd_flwr.core.errors import ConfigError

KMH = 1 / 3.6  # m/s per km/h
_HEADINGS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # east, north, west, south


class Mobility(ABC):
    """Where each vehicle is at given times; the base station sits at the origin.

    Subclass it and name your class in the scenario config to drive your own trajectories.
    """

    @abstractmethod
    def positions(self, num_vehicles: int, times_s: np.ndarray) -> np.ndarray:
        """Return (num_vehicles, len(times_s), 2) positions in metres.

        Must be deterministic, and a longer ``times_s`` must not change earlier positions.
        """


def _along(path: np.ndarray, distance_m: np.ndarray, closed: bool) -> np.ndarray:
    """Points at ``distance_m`` along the polyline ``path`` (P, 2); wraps if ``closed``."""
    pts = np.vstack([path, path[:1]]) if closed else path
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    dist = np.mod(distance_m, cum[-1]) if closed else np.clip(distance_m, 0.0, cum[-1])
    return np.stack(
        [np.interp(dist, cum, pts[:, 0]), np.interp(dist, cum, pts[:, 1])], axis=-1
    )


@dataclass(frozen=True)
class ManhattanGrid(Mobility):
    """Vehicles drive a square street grid centred on the base station at constant speed.

    At each crossing a vehicle goes straight (probability 1/2) or turns left or right,
    never leaving the square; each vehicle has its own seeded stream of turns.
    """

    speed_kmh: float = 30.0  # paper Section V
    block_m: float = 50.0  # street spacing, [assumed] dense urban block
    # Streets span [-h, h]^2: a UMi cell (TR 38.901 ISD 200 m)
    half_size_m: float = 100.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.speed_kmh <= 0 or self.block_m <= 0 or self.half_size_m < self.block_m:
            raise ConfigError(
                f"need speed_kmh > 0 and 0 < block_m <= half_size_m, got {self.speed_kmh}, "
                f"{self.block_m}, {self.half_size_m}"
            )

    def _route(self, rng: np.random.Generator, crossings: int) -> np.ndarray:
        # crossings at integer (i, j), |i|, |j| <= n
        n = int(self.half_size_m // self.block_m)
        x, y = (int(v) for v in rng.integers(-n, n + 1, size=2))
        heading = int(rng.integers(4))
        route = [(x, y)]
        for _ in range(crossings):
            # straight, left, right
            choices = [
                heading,
                (heading + 1) % 4,
                (heading + 3) % 4,
            ]
            weights = [0.5, 0.25, 0.25]
            ok = [
                abs(x + _HEADINGS[h][0]) <= n and abs(y + _HEADINGS[h][1]) <= n
                for h in choices
            ]
            if not any(ok):  # a corner reached head-on: turn back
                choices, weights, ok = [(heading + 2) % 4], [1.0], [True]
            weights = [w if good else 0.0 for w, good in zip(weights, ok)]
            cumulative = list(accumulate(weights))
            heading = choices[bisect_right(cumulative, rng.random() * cumulative[-1])]
            x, y = x + _HEADINGS[heading][0], y + _HEADINGS[heading][1]
            route.append((x, y))
        return np.array(route, dtype=float) * self.block_m

    def positions(self, num_vehicles: int, times_s: np.ndarray) -> np.ndarray:
        """Positions along each vehicle's random walk over the street grid."""
        times = np.asarray(times_s, dtype=float)
        travelled = times * self.speed_kmh * KMH
        crossings = (
            int(np.ceil((travelled.max(initial=0.0) + self.block_m) / self.block_m)) + 1
        )
        out = np.empty((num_vehicles, len(times), 2))
        for v, child in enumerate(
            np.random.SeedSequence(self.seed).spawn(num_vehicles)
        ):
            rng = np.random.default_rng(child)
            # vehicles do not all sit on a crossing at t = 0
            start = rng.uniform(0.0, self.block_m)
            # draws are sequential per vehicle, so a longer horizon keeps the earlier route
            route = self._route(rng, crossings)
            out[v] = _along(route, start + travelled, closed=False)
        return out


@dataclass(frozen=True)
class Route(Mobility):
    """Vehicles follow one closed route (waypoints in metres), evenly spaced along it."""

    waypoints_m: Sequence[tuple[float, float]] = (
        (-150, -100),
        (150, -100),
        (150, 100),
        (-150, 100),
    )
    speed_kmh: float = 30.0

    def positions(self, num_vehicles: int, times_s: np.ndarray) -> np.ndarray:
        """Positions along the loop; vehicle ``v`` starts ``v / num_vehicles`` of the way round."""
        path = np.asarray(self.waypoints_m, dtype=float)
        if path.ndim != 2 or path.shape[1] != 2 or len(path) < 2:
            raise ConfigError(
                f"waypoints_m must be >= 2 (x, y) pairs, got {self.waypoints_m!r}"
            )
        length = np.linalg.norm(
            np.diff(np.vstack([path, path[:1]]), axis=0), axis=1
        ).sum()
        starts = np.arange(num_vehicles)[:, None] * length / num_vehicles
        travelled = np.asarray(times_s, dtype=float)[None, :] * self.speed_kmh * KMH
        return _along(path, starts + travelled, closed=True)

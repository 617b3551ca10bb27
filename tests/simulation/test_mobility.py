"""Tests of the vehicle trajectories."""

import numpy as np
import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.simulation.mobility import ManhattanGrid, Route


def test_manhattan_grid_speed_bounds_and_streets() -> None:
    grid = ManhattanGrid(speed_kmh=30.0, block_m=50.0, half_size_m=100.0, seed=1)
    times = np.arange(0, 300, 0.5)
    pos = grid.positions(10, times)  # (V, T, 2)
    assert pos.shape == (10, len(times), 2)
    step = np.linalg.norm(np.diff(pos, axis=1), axis=-1)
    assert np.all(step <= 30 / 3.6 * 0.5 + 1e-9)  # never faster than 30 km/h
    assert np.median(step) == pytest.approx(
        30 / 3.6 * 0.5
    )  # straight segments at 30 km/h
    assert np.all(np.abs(pos) <= 100.0 + 1e-9)
    on_street = np.isclose(np.mod(pos, 50.0), 0.0) | np.isclose(np.mod(pos, 50.0), 50.0)
    assert np.all(on_street.any(axis=-1))  # always on an x- or y-street


def test_manhattan_grid_is_seeded_and_prefix_stable() -> None:
    grid = ManhattanGrid(seed=3)
    short, long = (
        grid.positions(4, np.arange(50) * 10.0),
        grid.positions(4, np.arange(200) * 10.0),
    )
    np.testing.assert_array_equal(short, long[:, :50])
    assert not np.allclose(
        short, ManhattanGrid(seed=4).positions(4, np.arange(50) * 10.0)
    )
    with pytest.raises(ConfigError):
        ManhattanGrid(block_m=200.0, half_size_m=100.0)


def test_route_loops_at_constant_speed() -> None:
    route = Route(
        waypoints_m=((0, 0), (100, 0), (100, 100), (0, 100)), speed_kmh=36.0
    )  # 10 m/s, 400 m loop
    pos = route.positions(2, np.array([0.0, 5.0, 40.0]))
    np.testing.assert_allclose(pos[0], [[0, 0], [50, 0], [0, 0]], atol=1e-9)
    np.testing.assert_allclose(
        pos[1, 0], [100, 100]
    )  # second vehicle starts half-way round

"""Tests of the clustered planner (against brute force) and of the clustering policies."""

import math

import numpy as np
import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState, Workload
from splitkd_flwr.simulation.channel import LinkConfig
from splitkd_flwr.simulation.cluster_planning import (
    BySpeed,
    ClusterPlanner,
    ClusterSelector,
    InOrder,
    RandomClusters,
    load_cluster_selector,
)
from splitkd_flwr.simulation.devices import DeviceProfile, Fleet


def _random_instance(rng: np.random.Generator):
    """A random server and devices, workload, cluster of 1-5 devices, and a bound."""
    server = DeviceProfile(
        "server",
        "random GPU",
        clock_hz=rng.uniform(1.5e9, 3e9),
        cores=int(rng.integers(4096, 20000)),
        kappa=10 ** rng.uniform(-26.5, -25.5),
        static_power_w=rng.uniform(0, 200),
        tx_power_w=rng.uniform(0.5, 5),
        utilisation=rng.uniform(0.2, 0.8),
        clock_steps_hz=tuple(
            np.sort(rng.uniform(0.2e9, 1.5e9, int(rng.integers(1, 12))))
        ),
    )
    devices = {
        f"dev{i}": DeviceProfile(
            f"dev{i}",
            "random Jetson",
            rng.uniform(0.5e9, 1.5e9),
            int(rng.integers(256, 4096)),
            10 ** rng.uniform(-26.5, -25.5),
            rng.uniform(0, 20),
            rng.uniform(0.05, 1.0),
            rng.uniform(0.2, 0.8),
        )
        for i in range(3)
    }
    fleet = Fleet("server", tuple(devices), {"server": server, **devices})
    workload = Workload(
        int(rng.integers(2, 10)),
        int(rng.integers(1, 8)),
        int(rng.choice([64, 256])),
        int(rng.integers(1, 6)),
        2,
        2,
    )
    k = int(rng.integers(1, 6))
    cluster = [
        DeviceState(
            i,
            i,
            f"dev{int(rng.integers(3))}",
            uplink_bps=10 ** rng.uniform(6, 9.5),
            downlink_bps=10 ** rng.uniform(7, 9.5),
            snr_db=rng.uniform(-5, 40),
        )
        for i in range(k)
    ]
    # relative to the least delay, so both branches (bound met or not) occur
    return workload, fleet, cluster, float(rng.uniform(0.8, 3))


def test_energy_optimal_equals_brute_force_and_keeps_a_feasible_bound() -> None:
    rng = np.random.default_rng(7)
    feasible_seen = infeasible_seen = moved = 0
    for _ in range(120):
        # Prepare
        workload, fleet, cluster, scale = _random_instance(rng)
        planner = ClusterPlanner(workload, fleet=fleet)
        bound = scale * planner.least_delay_s(cluster)
        planner.delay_bound_s = bound
        # Execute
        plan = planner.plan(cluster, 1)
        # Assert: every (cut, clock) in turn
        grid = planner.evaluate(cluster)
        best, best_delay = math.inf, math.inf
        for c in range(grid.delay_s.shape[0]):
            for f in range(grid.delay_s.shape[1]):
                delay, energy = grid.delay_s[c, f], grid.energy_j[c, f]
                best_delay = min(best_delay, delay)
                if delay <= bound and energy < best:
                    best = energy
        if math.isfinite(best):
            feasible_seen += 1
            assert plan.feasible and plan.modelled["delay_s"] <= bound
            assert plan.modelled["energy_j"] == pytest.approx(best, rel=1e-12)
        else:
            infeasible_seen += 1
            assert not plan.feasible
            assert plan.modelled["delay_s"] == pytest.approx(best_delay, rel=1e-12)
        assert plan.server_clock_hz in fleet.server_profile.clock_steps_hz
        moved += plan.cut_layer > 1
    assert feasible_seen > 40 and infeasible_seen > 10 and moved > 5


def test_baselines_and_least_delay() -> None:
    fleet = Fleet()
    link = LinkConfig()
    workload = Workload(16, 8, 512, 10, 2, 2)
    cluster = [
        DeviceState(i, i, name, 1e9, 1.5e9, 30.0)
        for i, name in enumerate(fleet.devices[:3])
    ]
    plans = {
        m: ClusterPlanner(workload, method=m, fleet=fleet, link=link).plan(cluster)
        for m in ("server-only", "device-only", "least-delay", "energy-optimal")
    }
    top = fleet.server_profile.clock_hz
    assert plans["server-only"].cut_layer == 1
    assert plans["device-only"].cut_layer == 15
    assert plans["server-only"].server_clock_hz == top
    assert plans["least-delay"].modelled["delay_s"] <= min(
        p.modelled["delay_s"] for p in plans.values()
    )
    # unbounded: the least energy of all
    assert plans["energy-optimal"].modelled["energy_j"] <= min(
        p.modelled["energy_j"] for p in plans.values()
    )
    with pytest.raises(ConfigError, match="method"):
        ClusterPlanner(workload, method="fastest")
    with pytest.raises(ConfigError, match="delay-bound-s"):
        ClusterPlanner(workload, 0.0)


def _fleet_states(n: int = 10, snrs=None) -> list[DeviceState]:
    fleet = Fleet()
    snrs = np.linspace(-5, 40, n) if snrs is None else snrs
    return [
        DeviceState(
            100 + i, i, fleet.devices[i % len(fleet.devices)], 1e9, 1e9, snrs[i]
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("name", ["in-order", "random", "by-speed"])
def test_every_policy_partitions_the_fleet_once_per_pass(name: str) -> None:
    planner = ClusterPlanner(Workload(16, 8, 512, 10, 2, 2))
    states = _fleet_states()
    for k in (1, 3, 5, 10):
        selector = load_cluster_selector(name, k, seed=1, model=planner.model)
        n = selector.num_clusters(len(states))
        for first in (1, 1 + n):
            chosen = [selector.select(states, r) for r in range(first, first + n)]
            ids = sorted(d.partition_id for c in chosen for d in c)
            assert ids == list(range(10))
            assert all(1 <= len(c) <= k for c in chosen)


def test_in_order_with_one_device_is_round_robin_and_by_speed_groups_alike() -> None:
    states = _fleet_states()
    assert [InOrder(1).select(states, r)[0].partition_id for r in range(1, 13)] == [
        *range(10),
        0,
        1,
    ]
    model = ClusterPlanner(Workload(16, 8, 512, 10, 2, 2)).model
    # one link for all: speed is compute alone
    groups = BySpeed(5, model=model).clusters(_fleet_states(snrs=[30.0] * 10), 1)
    speed = {
        d.partition_id: model.fleet.profile(d.profile_name).peak_flops
        * model.fleet.profile(d.profile_name).utilisation
        for d in states
    }
    # the fastest device sits in the first cluster, the slowest in the last
    assert max(speed, key=speed.get) in [d.partition_id for d in groups[0]]
    assert min(speed, key=speed.get) in [d.partition_id for d in groups[-1]]
    # seeded: the same draw twice, another seed another draw
    a = RandomClusters(5, seed=1).clusters(states, 1)
    assert [d.partition_id for d in a[0]] == [
        d.partition_id for d in RandomClusters(5, seed=1).clusters(states, 1)[0]
    ]


def test_loading_refuses_bad_specs() -> None:
    with pytest.raises(ConfigError, match="cluster-size"):
        InOrder(0)
    with pytest.raises(ConfigError, match="unknown ClusterSelector"):
        load_cluster_selector("fastest", 2)
    assert isinstance(
        load_cluster_selector("splitkd_flwr.simulation.cluster_planning:InOrder", 2),
        ClusterSelector,
    )

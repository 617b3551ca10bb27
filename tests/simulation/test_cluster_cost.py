"""Tests of the cluster round's cost: K = 1 is the sequential round; the queue against a replay."""

import heapq
import math

import numpy as np
import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState, Workload
from splitkd_flwr.simulation.channel import LinkConfig
from splitkd_flwr.simulation.cluster_cost import (
    ClusterCostModel,
    pipelined_round_s,
    shared_rate_bps,
)
from splitkd_flwr.simulation.cost import CostModel, DeviceArrays
from splitkd_flwr.simulation.devices import Fleet

WORKLOAD = Workload(16, 8, 512, 10, 2, 2)


def _model(workload: Workload = WORKLOAD) -> ClusterCostModel:
    fleet = Fleet()
    return ClusterCostModel(
        CostModel(workload, fleet.server_profile), fleet, LinkConfig()
    )


def _state(i: int, profile: str, snr_db: float, link: LinkConfig) -> DeviceState:
    _, up = link.link_rate(np.array(snr_db), "UL")
    _, down = link.link_rate(np.array(snr_db + 10 * math.log10(4 / 0.2)), "DL")
    return DeviceState(i, i, profile, float(up), float(down), snr_db)


def test_one_device_cluster_is_the_sequential_round() -> None:
    # Prepare
    model = _model()
    fleet = model.fleet
    for profile in set(fleet.devices):
        state = DeviceState(0, 0, profile, 3e8, 9e8, 10.0)
        # Execute
        cluster = model.evaluate([state])
        sequential = model.cost.evaluate(
            DeviceArrays.of([fleet.profile(profile)]),
            [3e8],
            [9e8],
            np.asarray(fleet.server_profile.clock_steps_hz),
        )
        # Assert
        np.testing.assert_allclose(cluster.delay_s, sequential.delay_s[0], rtol=1e-12)
        np.testing.assert_allclose(cluster.energy_j, sequential.energy_j[0], rtol=1e-12)


def test_shared_carrier_rates() -> None:
    link = LinkConfig()
    snr = np.array([-5.0, 5.0, 15.0, 30.0, 45.0])
    _, full_up = link.link_rate(snr, "UL")
    _, full_down = link.link_rate(snr, "DL")
    np.testing.assert_array_equal(shared_rate_bps(link, snr, "UL", 1.0), full_up)
    for k in (2, 3, 5, 10):
        up = shared_rate_bps(link, snr, "UL", 1 / k)
        down = shared_rate_bps(link, snr, "DL", 1 / k)
        # a share never does worse than 1/K of the carrier, and above the power-limited
        # range never beats it (the share itself, e.g. 88 PRBs at K = 3, is one allocation
        # the whole-carrier model's halvings lack, so a power-limited device may gain a bit)
        assert np.all(up >= full_up / k - 1e-6)
        assert np.all(up[1:] <= full_up[1:])
        # downlink: the base station's power is split too, so exactly 1/K at high SNR
        np.testing.assert_allclose(down[-1], full_down[-1] / k, rtol=1e-12)
        assert np.all(down[1:] <= full_down[1:] / k + 1e-6)
    # a power-limited uplink loses less than 1/K: its power now covers fewer PRBs
    assert shared_rate_bps(link, snr, "UL", 0.5)[0] > full_up[0] / 2
    with pytest.raises(ConfigError, match="share"):
        shared_rate_bps(link, snr, "UL", 0.0)


def _replay(first, arrive, tail, finish, frame_s, steps) -> float:
    """The FIFO server as an event queue, one grid point (scalars per device)."""
    k = len(first)
    events = [(first[i], i) for i in range(k)]
    heapq.heapify(events)
    free, end = 0.0, 0.0
    left = [steps] * k
    while events:
        at, i = heapq.heappop(events)
        done = max(free, at) + frame_s
        free = done
        left[i] -= 1
        if left[i]:
            heapq.heappush(events, (done + tail[i] + arrive[i], i))
        else:
            end = max(end, done + tail[i] + finish[i])
    return end


def test_pipelined_round_equals_an_event_replay() -> None:
    rng = np.random.default_rng(3)
    for _ in range(40):
        # Prepare
        k, c, f, steps = (int(rng.integers(1, 6)), 3, 4, int(rng.integers(1, 6)))
        first, arrive, tail, finish = (rng.uniform(0, 5, (k, c)) for _ in range(4))
        # equal arrivals: ties go to the device listed first in both
        arrive[:, 0] = first[:, 0] = 1.0
        frame_s = rng.uniform(0.1, 3, (c, f))
        # Execute
        got = pipelined_round_s(first, arrive, tail, finish, frame_s, steps)
        # Assert
        for ci in range(c):
            for fi in range(f):
                want = _replay(
                    first[:, ci],
                    arrive[:, ci],
                    tail[:, ci],
                    finish[:, ci],
                    frame_s[ci, fi],
                    steps,
                )
                assert got[ci, fi] == pytest.approx(want, rel=1e-12)


def test_server_bound_cluster_pipelines_and_fast_devices_pull_the_cut_up() -> None:
    # Prepare: five fast devices on an excellent link, 100 local steps (weights amortised)
    model = _model(Workload(16, 8, 512, 100, 2, 2))
    link = model.link
    cluster = [_state(i, "agx-orin-1.3", 40.0, link) for i in range(5)]
    # Execute
    alone = model.evaluate(cluster[:1]).delay_s[:, -1]
    together = model.evaluate(cluster).delay_s[:, -1]
    # Assert: together beats five rounds in turn, and the least delay moves off cut 1
    assert together[0] < 5 * alone[0]
    assert int(np.argmin(alone)) == 0
    assert int(np.argmin(together)) + 1 >= 8
    # the server is busy K B s: at cut 1 the round is within one device's local time of it
    busy = model.evaluate(cluster).server_busy_s[0, -1]
    assert busy <= together[0] <= 1.5 * busy


def test_empty_cluster_and_missing_links_are_refused() -> None:
    model = _model()
    with pytest.raises(ConfigError, match="at least one"):
        model.evaluate([])
    with pytest.raises(ConfigError, match="link rates"):
        model.evaluate([DeviceState(0, 0, "agx-orin-1.3")])
    with pytest.raises(ConfigError, match="SNR"):
        model.evaluate([DeviceState(i, i, "agx-orin-1.3", 1e8, 1e8) for i in range(2)])

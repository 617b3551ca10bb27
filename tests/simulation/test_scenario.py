"""Tests of the scenario API the Flower strategy uses."""

import numpy as np
import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import Workload
from splitkd_flwr.simulation.planning import EnergyOptimal
from splitkd_flwr.simulation.scenario import Scenario


def test_profiles_links_and_states() -> None:
    scenario = Scenario()
    assert scenario.num_devices == 10
    assert scenario.profile_of(8).hardware == "Jetson AGX Xavier"
    link = scenario.link_at(3, 5)
    assert link.uplink_bps > 0 and link.downlink_bps > 0
    assert link == scenario.link_at(3, 5)  # repeatable
    state = scenario.device_state(3, 5, node_id=77, energy_used_j=5.0)
    assert (state.node_id, state.profile_name, state.uplink_bps) == (
        77,
        "agx-orin-1.0",
        link.uplink_bps,
    )
    with pytest.raises(ConfigError):
        scenario.link_at(10, 1)
    with pytest.raises(ConfigError):
        scenario.link_at(0, 0)


def test_later_rounds_extend_the_trace_without_changing_earlier_ones() -> None:
    scenario = Scenario()
    early = [scenario.link_at(p, r) for p in range(10) for r in (1, 30)]
    scenario.link_at(0, 500)
    assert early == [scenario.link_at(p, r) for p in range(10) for r in (1, 30)]
    fresh = Scenario()
    assert fresh.link_at(0, 500) == scenario.link_at(0, 500)


def test_from_config_and_noise() -> None:
    good = Scenario.from_config(
        {"scenario-noise": "good", "scenario-seed": 2, "num-rounds": 3}
    )
    poor = good.with_noise("poor")
    rates = np.array(
        [
            [good.link_at(p, r).uplink_bps, poor.link_at(p, r).uplink_bps]
            for p in range(10)
            for r in range(1, 20)
        ]
    )
    assert np.all(rates[:, 1] <= rates[:, 0]) and np.any(rates[:, 1] < rates[:, 0])
    snr = [good.link_at(0, 1).snr_db, poor.link_at(0, 1).snr_db]
    assert snr[0] - snr[1] == pytest.approx(6.0)
    with pytest.raises(ConfigError):
        Scenario.from_config({"scenario-colour": "red"})
    with pytest.raises(ConfigError):
        Scenario.from_config({"scenario-noise": "awful"})


def test_round_metrics_agree_with_the_planner() -> None:
    scenario = Scenario()
    workload = Workload(16, 8, 512, 4, 2, 2)
    plan = EnergyOptimal(workload, delay_bound_s=300.0).plan(
        scenario.device_state(4, 2), 2
    )
    metrics = scenario.round_metrics(
        plan.cut_layer, plan.server_clock_hz, workload, 4, 2
    )
    assert metrics == pytest.approx(plan.modelled)
    assert {
        "delay_s",
        "energy_j",
        "device_compute_j",
        "device_tx_j",
        "server_compute_j",
    } <= set(metrics)

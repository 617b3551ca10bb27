"""Tests of the clustered sweep: K = 1 is the sequential case study; clusters shorten a pass."""

import numpy as np
import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.simulation.case_study import (
    CaseStudyConfig,
    least_delay_s,
    scaled_scenario,
)
from splitkd_flwr.simulation.cluster_study import (
    run_cluster_sweep,
    sweep_summary,
    uniform_cluster_cuts,
)
from splitkd_flwr.simulation.planning import EnergyOptimal


def test_clusters_of_one_are_the_sequential_case_study() -> None:
    # Prepare
    config = CaseStudyConfig()
    scenario = scaled_scenario(config).with_noise("normal")
    # Execute
    rows = run_cluster_sweep(config, sizes=(1, 5), passes=2)
    # Assert: each pass of K = 1 is the sequential planner's ten rounds, summed
    planner = EnergyOptimal(config.workload, fleet=scenario.fleet)
    for p in (1, 2):
        states = [scenario.device_state(i, p) for i in range(scenario.num_devices)]
        bounds = (1 + config.delay_slack) * least_delay_s(planner, states)
        plans = planner.plan_many(states, p, warn=False, delay_bounds_s=bounds)
        (row,) = [
            r
            for r in rows
            if (r["cluster_size"], r["pass"], r["method"])
            == (1, p, "proposed-clustered")
        ]
        assert row["energy_j"] == pytest.approx(
            sum(q.modelled["energy_j"] for q in plans), rel=1e-9
        )
        assert row["delay_s"] == pytest.approx(
            sum(q.modelled["delay_s"] for q in plans), rel=1e-9
        )
    summary = {(s["cluster_size"], s["method"]): s for s in sweep_summary(rows)}
    # clusters of five finish a pass sooner than one device at a time
    assert (
        summary[5, "proposed-clustered"]["delay_s"]
        < summary[5, "proposed-sequential"]["delay_s"]
    )
    assert summary[5, "proposed-sequential"] == {
        **summary[1, "proposed-clustered"],
        "cluster_size": 5,
        "method": "proposed-sequential",
    }
    with pytest.raises(ConfigError, match="cluster sizes"):
        run_cluster_sweep(config, sizes=(11,), passes=1)


def test_identical_fast_devices_move_the_cut_once_weights_are_amortised() -> None:
    rows = uniform_cluster_cuts(CaseStudyConfig(), sizes=(1, 5))
    at = {(r["batches_per_round"], r["cluster_size"]): r for r in rows}
    assert at[100, 1]["least_delay_cut"] == 1
    assert at[100, 5]["least_delay_cut"] > 8
    assert at[100, 5]["least_delay_s"] < at[100, 5]["delay_at_cut_1_s"]
    assert np.isclose(at[10, 1]["least_delay_s"], at[10, 1]["delay_at_cut_1_s"])

"""The case study's clustered sweep: delay and energy per pass over the fleet, and the cut, vs K.

A pass trains every vehicle once: ``ceil(N / K)`` cluster rounds in turn, each cluster planned
on its own. Links are those at the pass's start (one mobility sample per pass, 10 s apart by
default), so every method and every K of a pass sees the same channels. Methods:

- ``proposed-clustered``: :class:`ClusterPlanner` energy-optimal per cluster round, bound
  ``(1 + slack) x`` that round's least delay (as the sequential case study);
- ``proposed-sequential``: the same planner on clusters of one (today's rounds), the same
  figures at every K;
- ``server-only`` / ``device-only``: cut 1 / L-1 at the top clock, clustered at K;
- and, for the cut, ``least-delay``: the cut that minimises the cluster round's delay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState
from splitkd_flwr.simulation.case_study import CaseStudyConfig, scaled_scenario
from splitkd_flwr.simulation.cluster_planning import (
    ClusterPlanner,
    load_cluster_selector,
)

CLUSTER_SIZES = (1, 2, 3, 5, 10)
SWEEP_METHODS = (
    "proposed-clustered",
    "proposed-sequential",
    "server-only",
    "device-only",
    "least-delay",
)


def _pass_rows(
    planners: dict[str, ClusterPlanner],
    clusters: Sequence[Sequence[Any]],
    slack: float,
) -> dict[str, dict[str, float]]:
    """Per method: delay and energy summed over the clusters, mean cut, infeasible rounds."""
    out = {
        m: {"delay_s": 0.0, "energy_j": 0.0, "cuts": [], "infeasible": 0}
        for m in planners
    }
    base = next(iter(planners.values()))
    for cluster in clusters:
        cost = base.evaluate(cluster)
        bound = (1 + slack) * float(cost.delay_s.min())
        for method, planner in planners.items():
            plan = planner.plan(cluster, delay_bound_s=bound, cost=cost)
            row = out[method]
            row["delay_s"] += plan.modelled["delay_s"]
            row["energy_j"] += plan.modelled["energy_j"]
            row["cuts"].append(plan.cut_layer)
            row["infeasible"] += not plan.feasible
    return out


def run_cluster_sweep(
    config: CaseStudyConfig,
    sizes: Sequence[int] = CLUSTER_SIZES,
    passes: int = 50,
    policy: str = "by-speed",
    noise: str = "normal",
    on_step: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (K, pass, method): delay (s) and energy (J) of the pass, cuts chosen."""
    if passes < 1:
        raise ConfigError(f"passes must be >= 1, got {passes}")
    scenario = scaled_scenario(config).with_noise(noise)
    scenario.trace(passes)
    fleet, workload = scenario.fleet, config.workload
    n = scenario.num_devices
    if any(not 1 <= k <= n for k in sizes):
        raise ConfigError(f"cluster sizes must lie in 1..{n}, got {list(sizes)}")
    methods = {
        "proposed-clustered": "energy-optimal",
        "server-only": "server-only",
        "device-only": "device-only",
        "least-delay": "least-delay",
    }
    planners = {
        name: ClusterPlanner(
            workload, method=method, fleet=fleet, link=scenario.link_config
        )
        for name, method in methods.items()
    }
    model = planners["least-delay"].model
    sequential: dict[int, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for k in sorted(set(sizes) | {1}):
        selector = load_cluster_selector(
            policy, k, seed=config.scenario.seed, model=model
        )
        for p in range(1, passes + 1):
            states = [scenario.device_state(i, p) for i in range(n)]
            figures = _pass_rows(
                planners, selector.clusters(states, p), config.delay_slack
            )
            if k == 1:
                sequential[p] = figures["proposed-clustered"]
            if k not in sizes:
                continue
            figures["proposed-sequential"] = sequential[p]
            for method in SWEEP_METHODS:
                f = figures[method]
                rows.append(
                    {
                        "cluster_size": k,
                        "pass": p,
                        "method": method,
                        "delay_s": f["delay_s"],
                        "energy_j": f["energy_j"],
                        "mean_cut": float(np.mean(f["cuts"])),
                        "max_cut": int(max(f["cuts"])),
                        "infeasible_rounds": int(f["infeasible"]),
                    }
                )
        if on_step is not None:
            on_step(f"K = {k}")
    return rows


def sweep_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (K, method): mean delay and energy per pass, mean and largest cut."""
    out = []
    keys = list(dict.fromkeys((r["cluster_size"], r["method"]) for r in rows))
    for k, method in keys:
        sel = [r for r in rows if r["cluster_size"] == k and r["method"] == method]
        out.append(
            {
                "cluster_size": k,
                "method": method,
                "delay_s": float(np.mean([r["delay_s"] for r in sel])),
                "energy_j": float(np.mean([r["energy_j"] for r in sel])),
                "mean_cut": float(np.mean([r["mean_cut"] for r in sel])),
                "max_cut": int(max(r["max_cut"] for r in sel)),
                "infeasible_rounds": int(sum(r["infeasible_rounds"] for r in sel)),
            }
        )
    return out


def uniform_cluster_cuts(
    config: CaseStudyConfig,
    sizes: Sequence[int] = CLUSTER_SIZES,
    profile: str = "agx-orin-1.3",
    snr_db: float = 40.0,
    batches: Sequence[int] = (10, 100),
) -> list[dict[str, Any]]:
    """The least-delay cut of a cluster of K identical devices on one link (the issue's estimate).

    Per (batches per round, K): the cut that minimises the round's delay, the delay there and at
    cut 1 (both at the top clock), and the energy-optimal cut under the sweep's bound.
    """
    scenario = scaled_scenario(config)
    link = scenario.link_config
    tx_w = scenario.fleet.profile(profile).tx_power_w
    bs_w = scenario.fleet.server_profile.tx_power_w
    _, up = link.link_rate(np.array(snr_db), "UL")
    _, down = link.link_rate(np.array(snr_db + 10 * np.log10(bs_w / tx_w)), "DL")
    out = []
    for b in batches:
        planner = ClusterPlanner(
            replace(config, batches_per_round=b).workload,
            fleet=scenario.fleet,
            link=link,
        )
        for k in sizes:
            cluster = [
                DeviceState(i, i, profile, float(up), float(down), snr_db)
                for i in range(k)
            ]
            cost = planner.evaluate(cluster)
            top = cost.delay_s[:, -1]
            fastest = int(np.argmin(top))
            plan = planner.plan(
                cluster,
                delay_bound_s=(1 + config.delay_slack) * top[fastest],
                cost=cost,
            )
            out.append(
                {
                    "batches_per_round": b,
                    "cluster_size": k,
                    "least_delay_cut": fastest + 1,
                    "delay_at_cut_1_s": float(top[0]),
                    "least_delay_s": float(top[fastest]),
                    "energy_optimal_cut": plan.cut_layer,
                }
            )
    return out

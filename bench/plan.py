"""Time of planning one round: 10 devices x all cut layers x all server clock steps.

    .venv/bin/python bench/plan.py --repeats 200

Rows: ``energy-optimal, 1 device`` (``EnergyOptimal.plan``, what the strategy calls each
round), ``energy-optimal, 10 devices`` (``plan_many``: all ten vehicles in one pass),
``exhaustive grid, 10 devices`` (``CostModel.evaluate`` over the full (10, 15, 155) grid
and a masked argmin, the brute force the planner is tested against), ``server-only``.
Median and 95th percentile of ``--repeats`` calls, after one warm-up call.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np

from splitkd_flwr.core.types import Workload
from splitkd_flwr.simulation.cost import DeviceArrays
from splitkd_flwr.simulation.planning import EnergyOptimal, ServerOnly
from splitkd_flwr.simulation.scenario import Scenario


def _time_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), float(np.percentile(samples, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--delay-bound-s", type=float, default=150.0)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(
        logging.ERROR
    )  # infeasible rounds would warn each call

    scenario = Scenario()
    workload = Workload(16, 8, 512, 10, 2, 2)
    states = [scenario.device_state(p, 1) for p in range(scenario.num_devices)]
    planner = EnergyOptimal(
        workload, delay_bound_s=args.delay_bound_s, fleet=scenario.fleet
    )
    server_only = ServerOnly(workload, fleet=scenario.fleet)
    arrays = DeviceArrays.of(
        [scenario.profile_of(p) for p in range(scenario.num_devices)]
    )
    up = np.array([s.uplink_bps for s in states])
    down = np.array([s.downlink_bps for s in states])

    def exhaustive() -> None:
        grid = planner.cost.evaluate(arrays, up, down, planner.clock_steps_hz)
        energy = np.where(grid.delay_s <= args.delay_bound_s, grid.energy_j, np.inf)
        energy.reshape(len(states), -1).argmin(axis=1)

    shape = (len(states), planner.cost.num_cuts, len(planner.clock_steps_hz))
    print(
        f"grid: {shape[0]} devices x {shape[1]} cuts x {shape[2]} clock steps = {np.prod(shape)} plans"
    )
    rows = {
        "energy-optimal, 1 device": lambda: planner.plan(states[0], 1),
        "energy-optimal, 10 devices": lambda: planner.plan_many(states, 1, warn=False),
        "exhaustive grid, 10 devices": exhaustive,
        "server-only, 1 device": lambda: server_only.plan(states[0], 1),
    }
    print(f"{'':30} {'median ms':>10} {'p95 ms':>10}")
    for name, fn in rows.items():
        median, p95 = _time_ms(fn, args.repeats)
        print(f"{name:30} {median:10.3f} {p95:10.3f}")


if __name__ == "__main__":
    main()

"""Time of planning one round: 10 devices x all cut layers x all server clock steps.

    .venv/bin/python bench/plan.py --repeats 200
    .venv/bin/python bench/plan.py --costs [--device 8]

Rows: ``energy-optimal, 1 device`` (``EnergyOptimal.plan``, what the strategy calls each
round), ``energy-optimal, 10 devices`` (``plan_many``: all ten vehicles in one pass),
``exhaustive grid, 10 devices`` (``CostModel.evaluate`` over the full (10, 15, 155) grid
and a masked argmin, the brute force the planner is tested against), ``server-only``.
Median and 95th percentile of ``--repeats`` calls, after one warm-up call.

``--costs`` prints the modelled costs instead, for ``seed``, ``u-shape`` (full teacher
distributions) and ``u-shape`` with ``teacher-top-k = 8`` on the same world (Llama-3.2-1B
student, Llama-3.1-8B teacher, 10 batches of 8 x 512 tokens, bf16 wire and weights):
bytes per mini-batch, each cut's round at the top server clock for ``--device``, the
energy-optimal plan of every vehicle in round 1, and the memory per side.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from splitkd_flwr.core.types import Workload
from splitkd_flwr.simulation.cost import DeviceArrays
from splitkd_flwr.simulation.memory import GB, MemoryModel, fits
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


MODES = {
    "seed": {"split_mode": "seed"},
    "u-shape": {"split_mode": "u-shape"},
    "u-shape top-8": {"split_mode": "u-shape", "teacher_top_k": 8},
}


def print_costs(
    scenario: Scenario, workload: Workload, bound_s: float, device: int
) -> None:
    """The modelled costs of each split mode (module docstring, ``--costs``)."""
    state = scenario.device_state(device, 1)
    states = [scenario.device_state(p, 1) for p in range(scenario.num_devices)]
    print(
        f"device {device} ({state.profile_name}): uplink {state.uplink_bps / 1e6:.1f}, "
        f"downlink {state.downlink_bps / 1e6:.1f} Mbit/s; delay bound {bound_s:g} s"
    )
    for name, mode in MODES.items():
        w = replace(workload, **mode)
        planner = EnergyOptimal(w, delay_bound_s=bound_s, fleet=scenario.fleet)
        cost = planner.cost
        print(
            f"\n{name}: per mini-batch {cost.batch_up_bytes / 1e6:.1f} MB up, "
            f"{cost.batch_down_bytes / 1e6:.1f} MB down; per round (cut 1) "
            f"{cost.uplink_bytes[0] / 1e9:.2f} GB up, {cost.downlink_bytes[0] / 1e9:.2f} GB down"
        )
        top = planner.clock_steps_hz[-1:]
        grid = cost.evaluate(
            DeviceArrays.of([scenario.profile_of(device)]),
            [state.uplink_bps],
            [state.downlink_bps],
            top,
        )
        columns = ("device_compute_s", "uplink_s", "server_compute_s", "downlink_s")
        print(
            f"{'cut':>4}"
            + "".join(f"{c.removesuffix('_s'):>17}" for c in columns)
            + f"{'delay s':>10}{'energy kJ':>11}"
        )
        for i, cut in enumerate(cost.cuts):
            row = grid.record((0, i, 0))
            print(
                f"{cut:>4}"
                + "".join(f"{row[c]:>17.1f}" for c in columns)
                + f"{row['delay_s']:>10.1f}{row['energy_j'] / 1e3:>11.2f}"
            )
        plans = planner.plan_many(states, 1, warn=False)
        feasible = [p for p in plans if p.feasible]
        print(
            "energy-optimal plans, round 1 (device: cut, delay s, energy kJ): "
            + ", ".join(
                f"{i}: {p.cut_layer}, {p.modelled['delay_s']:.0f}"
                f"{'' if p.feasible else '!'}, {p.modelled['energy_j'] / 1e3:.1f}"
                for i, p in enumerate(plans)
            )
        )
        print(
            f"meets the bound: {len(feasible)} of {len(plans)}; energy of all plans "
            f"{sum(p.modelled['energy_j'] for p in plans) / 1e3:.1f} kJ"
        )
        memory = MemoryModel(w)
        dev, srv = memory.device().total, memory.server().total
        print(
            "memory GB at cuts 1 / 8 / 15: device "
            + " / ".join(f"{dev[c - 1] / GB:.1f}" for c in (1, 8, 15))
            + ", server "
            + " / ".join(f"{srv[c - 1] / GB:.1f}" for c in (1, 8, 15))
            + "; profiles with a cut that fits: "
            + ", ".join(
                sorted(
                    {
                        p.name
                        for p in map(scenario.fleet.profile, scenario.fleet.devices)
                        if fits(dev, p.memory_bytes).any()
                    }
                )
                or ["none"]
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--delay-bound-s", type=float, default=150.0)
    parser.add_argument(
        "--costs", action="store_true", help="print modelled costs per split mode"
    )
    parser.add_argument("--device", type=int, default=8, help="vehicle of --costs")
    args = parser.parse_args()
    # Infeasible rounds would warn each call (the planners log under splitkd_flwr)
    logging.getLogger("splitkd_flwr").setLevel(logging.ERROR)

    scenario = Scenario()
    workload = Workload(16, 8, 512, 10, 2, 2)
    if args.costs:
        print_costs(scenario, workload, args.delay_bound_s, args.device)
        return
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

"""Time of the full case study: 3 channel conditions x 200 rounds x 3 methods, and its sweeps.

    .venv/bin/python bench/case_study.py --rounds 200

Rows: ``scenario trace`` (mobility + channel for 10 vehicles), ``case study`` (what
``splitkd case-study --no-sweeps`` computes, without writing files), ``trade-off sweep``
and ``sensitivity sweep`` (at 100 rounds, as the command runs them), ``figures`` (CSV and
the PNGs). One run each (wall seconds; the machine's other load shows up here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from splitkd_flwr.commands.case_study import TRADEOFF_SLACKS
from splitkd_flwr.simulation import report
from splitkd_flwr.simulation.case_study import (
    CaseStudyConfig,
    run_case_study,
    sensitivity,
    tradeoff,
)
from splitkd_flwr.simulation.scenario import Scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    config = CaseStudyConfig(rounds=args.rounds)
    fast = replace(config, rounds=min(args.rounds, 100))

    timings = {}
    start = time.perf_counter()
    Scenario().trace(args.rounds)
    timings["scenario trace"] = time.perf_counter() - start
    start = time.perf_counter()
    result = run_case_study(config)
    timings[f"case study ({len(result.rows)} plans)"] = time.perf_counter() - start
    start = time.perf_counter()
    tradeoff(fast, TRADEOFF_SLACKS)
    timings[f"trade-off sweep ({len(TRADEOFF_SLACKS)} bounds)"] = (
        time.perf_counter() - start
    )
    start = time.perf_counter()
    rows = sensitivity(fast)
    timings[f"sensitivity sweep ({len(rows)} runs)"] = time.perf_counter() - start
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report.write_csv(result.rows, Path(tmp) / "c.csv")
        report.plot_per_round(result, "delay_s", Path(tmp) / "d.png", "s", "delay")
        report.plot_per_round(result, "energy_j", Path(tmp) / "e.png", "J", "energy")
    timings["figures (CSV + 2 PNG)"] = time.perf_counter() - start
    for name, seconds in timings.items():
        print(f"{name:40} {seconds:8.2f} s")


if __name__ == "__main__":
    main()

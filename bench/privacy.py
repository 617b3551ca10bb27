"""What the edge server recovers, and what each lever costs: the audit per configuration.

    .venv/bin/python bench/privacy.py [--rounds 3] [--search-steps 2]
    .venv/bin/python bench/privacy.py --rounds 2 --vehicles 1 \
        --only seed u-shape "seed + private layers" "u-shape + private layers"

With ``--vehicles 1`` the audited last round is the device's second: private layers are
then one round ahead of the server's copy (in a device's first round they are not).

Per configuration (``seed``; ``u-shape``; ``u-shape`` with top-k soft labels; with
``smashed-noise``; ``seed`` and ``u-shape`` with ``device-private-layers = 2``) it runs
``splitkd audit``'s short in-process training on the built-in models and corpus,
captures the last round as the server sees it, runs every attack, and prints one
Markdown table (tokens recovered per channel and attack) plus the held-out perplexity
and the bytes per mini-batch of the same run; ``privacy.png`` plots the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from splitkd_flwr.commands.audit import audit_config, plot_findings, run_audit

CONFIGS: dict[str, dict[str, object]] = {
    "seed": {},
    "u-shape": {"split-mode": "u-shape"},
    "u-shape, top-8": {"split-mode": "u-shape", "teacher-top-k": 8},
    "u-shape, noise 2000": {"split-mode": "u-shape", "smashed-noise": 2000.0},
    "u-shape, noise 500": {"split-mode": "u-shape", "smashed-noise": 500.0},
    "u-shape, noise 100": {"split-mode": "u-shape", "smashed-noise": 100.0},
    "seed + private layers": {"device-private-layers": 2},
    "u-shape + private layers": {"split-mode": "u-shape", "device-private-layers": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vehicles", type=int, default=2)
    parser.add_argument("--search-rows", type=int, default=1)
    parser.add_argument("--search-steps", type=int, default=0)
    parser.add_argument("--cut-layer", type=int, default=4)
    parser.add_argument("--only", nargs="*", default=list(CONFIGS)[:3])
    parser.add_argument("--plot", type=Path, default=Path("outputs/privacy.png"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    results, utility = {}, {}
    for name in args.only:
        started = time.perf_counter()
        config = audit_config(
            args.rounds, {"cut-layer": args.cut_layer, **CONFIGS[name]}
        )
        run, findings = run_audit(
            config, args.vehicles, args.search_rows, args.search_steps or None
        )
        results[name] = findings
        utility[name] = (
            run.final_perplexity,
            run.bytes_up_per_step,
            run.bytes_down_per_step,
            time.perf_counter() - started,
            run.device_perplexity,
        )
        print(f"{name}: done in {utility[name][3]:.0f} s", flush=True)
    channels = sorted(
        {(f.channel, f.attack) for fs in results.values() for f in fs},
        key=lambda x: x[0],
    )
    print("\n| what crosses the wire | attack | " + " | ".join(results) + " |")
    print("|---|---|" + "---|" * len(results))
    for channel, attack in channels:
        cells = []
        for findings in results.values():
            match = [f for f in findings if (f.channel, f.attack) == (channel, attack)]
            cells.append(f"{100 * match[0].recovered:.1f} %" if match else "not sent")
        print(f"| {channel} | {attack} | " + " | ".join(cells) + " |")
    print(
        "| held-out perplexity after the run | | "
        + " | ".join(f"{u[0]:.2f}" for u in utility.values())
        + " |"
    )
    print(
        "| held-out perplexity, the device's own student | | "
        + " | ".join(
            "same" if u[4] is None else f"{u[4]:.2f}" for u in utility.values()
        )
        + " |"
    )
    print(
        "| kB up / down per mini-batch | | "
        + " | ".join(f"{u[1] / 1e3:.1f} / {u[2] / 1e3:.1f}" for u in utility.values())
        + " |"
    )
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    print(f"plot: {plot_findings(results, args.plot)}")


if __name__ == "__main__":
    main()

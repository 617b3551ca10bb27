"""What each privacy lever costs in the real 10-vehicle run: perplexity and bytes per round.

    .venv/bin/python bench/privacy_runs.py [--rounds 10] [--only seed u-shape ...]

``bench/privacy.py`` measures what the server recovers in a short audit; this script
runs the full ``splitkd simulate`` (real Flower simulation, 10 vehicles, the built-in
models and corpus) once per configuration and prints one Markdown table: the server's
final held-out perplexity, the perplexity of the students deployed on the devices
(which, with ``device-private-layers``, hold the devices' own private layers), and the
mean bytes per round on the data plane and in the weight messages. Every figure comes
from the run's own ``summary.json`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS: dict[str, dict[str, object]] = {
    "seed": {},
    "u-shape": {"split-mode": "u-shape"},
    "u-shape, top-8": {"split-mode": "u-shape", "teacher-top-k": 8},
    "seed + private 2": {"device-private-layers": 2},
    "u-shape + private 2": {"split-mode": "u-shape", "device-private-layers": 2},
    "seed, noise 500": {"smashed-noise": 500.0},
    "u-shape, noise 500": {"split-mode": "u-shape", "smashed-noise": 500.0},
    "seed, noise 100": {"smashed-noise": 100.0},
    "u-shape, noise 100": {"split-mode": "u-shape", "smashed-noise": 100.0},
}

# Mean per round over the rounds that committed, in MB.
_BYTES = {
    "data plane up": "measured-bytes-up",
    "data plane down": "measured-bytes-down",
    "weights down": "weights-bytes-down",
    "weights up": "weights-bytes-up",
}


def run_config(
    name: str, overrides: dict[str, object], rounds: int, out: Path, extra: list[str]
) -> dict[str, object]:
    """Run ``splitkd simulate`` for one configuration; return its figures."""
    folder = out / name.replace(" ", "").replace(",", "_").replace("+", "_")
    args = [sys.executable, "-m", "splitkd_flwr.cli", "simulate"]
    args += ["--rounds", str(rounds), "--output-dir", str(folder)]
    for key, value in {**overrides}.items():
        args += ["--set", f"{key}={value}"]
    for item in extra:
        args += ["--set", item]
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: splitkd simulate failed:\n{done.stderr[-3000:]}")
    summary = json.loads((folder / "summary.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
    committed = [r for r in rows if r.get("status") == "ok"]
    figures: dict[str, object] = {
        "final perplexity": summary["final student perplexity"],
        "deployed perplexity": summary.get("deployed student perplexity on devices"),
        "rounds ok / rolled back": summary["rounds ok / rolled back"],
        "cut layers": [r.get("cut-layer") for r in committed],
        "wall s": wall_s,
    }
    for label, key in _BYTES.items():
        values = [r[key] for r in committed if key in r]
        figures[f"MB {label}"] = statistics.fmean(values) / 1e6 if values else 0.0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--only", nargs="*", default=list(CONFIGS))
    parser.add_argument("--set", nargs="*", default=[], help="key=value for all")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/privacy-runs"))
    args = parser.parse_args()
    results = {}
    for name in args.only:
        results[name] = run_config(
            name, CONFIGS[name], args.rounds, args.output_dir, args.set
        )
        print(f"{name}: {results[name]}", flush=True)
    columns = [
        "final perplexity",
        "deployed perplexity",
        *(f"MB {label}" for label in _BYTES),
    ]
    print("\n| configuration | " + " | ".join(columns) + " | cuts | rounds ok |")
    print("|---|" + "---|" * (len(columns) + 2))
    for name, figures in results.items():
        cells = [
            f"{figures[c]:.2f}" if isinstance(figures[c], float) else str(figures[c])
            for c in columns
        ]
        cuts = ",".join(str(c) for c in figures["cut layers"])
        print(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {cuts} | {figures['rounds ok / rolled back']} |"
        )
    (args.output_dir / "privacy-runs.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

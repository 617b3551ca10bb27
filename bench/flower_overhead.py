"""Per-round Flower control-plane overhead in simulation, beside the data plane's per-batch cost.

Runs the real apps under Flower's simulation engine with tiny models and reads, per round,
``measured-control-plane-s`` (the server's round wall time minus the device's time inside
its ``train`` handler: the Flower message both ways and the actor scheduling) and the data
plane's per-batch exchange time.

    python bench/flower_overhead.py --rounds 8 --vehicles 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from splitkd_flwr.flower.launch import LocalFederation  # noqa: E402
from tests.apps.tiny import save_tiny_pair  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--vehicles", type=int, default=2)
    parser.add_argument("--batches", type=int, default=4, help="mini-batches per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher_dir, student_dir = save_tiny_pair(root / "models")
        run_config = {
            "teacher": str(teacher_dir),
            "student": str(student_dir),
            "num-rounds": args.rounds,
            "max-batches-per-epoch": args.batches,
            "output-dir": str(root / "out"),
            "eval-batches": 1,
            "planner": "fixed",
            "cut-layer": 2,
        }
        with LocalFederation(
            home=root / "flwr", simulation=True, threads=1
        ) as federation:
            rc = federation.run(
                ROOT,
                run_config,
                {"num-supernodes": args.vehicles},
                log_path=root / "run.log",
            )
        if rc != 0:
            raise SystemExit(f"flwr run failed with exit code {rc}")
        rows = [
            json.loads(line)
            for line in (root / "out" / "metrics.jsonl").read_text().splitlines()
        ]
    rounds = [r for r in rows if r["round"] >= 1 and r.get("status") == "ok"]
    overhead = [r["measured-control-plane-s"] for r in rounds]
    per_batch = [r["measured-exchange-s"] / r["device-batches"] for r in rounds]
    server = [r["measured-server-compute-s"] / r["batches"] for r in rounds]
    print(
        f"{len(rounds)} rounds, {args.vehicles} simulated vehicles, {args.batches} batches each"
    )
    print(
        f"Flower control plane per round: first {overhead[0] * 1e3:.0f} ms (actor start), "
        f"then median {statistics.median(overhead[1:]) * 1e3:.0f} ms "
        f"(min {min(overhead[1:]) * 1e3:.0f}, max {max(overhead[1:]) * 1e3:.0f})"
    )
    print(
        f"data plane per mini-batch (exchange incl. server step): median "
        f"{statistics.median(per_batch) * 1e3:.1f} ms, of which server step "
        f"{statistics.median(server) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()

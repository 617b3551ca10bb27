"""Per-round metrics on disk (JSONL + CSV) and the end-of-run report."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
METRICS_REDONE = "metrics.redone.jsonl"

logger = logging.getLogger(__name__)


class MetricsLog:
    """Append one flat record per round to ``metrics.jsonl``; mirror all of it to ``metrics.csv``.

    Records are flat ``{key: scalar}`` dicts; measured figures carry a ``measured-`` prefix and
    modelled ones a ``modelled-`` prefix, so the two are never mixed up.
    """

    def __init__(
        self, output_dir: Path, resumed: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        self.output_dir = output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = output_dir / METRICS_JSONL
        self.csv_path = output_dir / METRICS_CSV
        self.records: list[dict[str, Any]] = []
        if resumed is None:
            self._set_aside_previous()
            self.jsonl_path.write_text("")
        else:
            self._resume(resumed)

    def _set_aside_previous(self) -> None:
        """A new run in a used folder keeps the old metrics under a dated name."""
        if self.jsonl_path.is_file() and self.jsonl_path.stat().st_size:
            stamp = time.strftime(
                "%Y%m%dT%H%M%S", time.gmtime(self.jsonl_path.stat().st_mtime)
            )
            kept = self.jsonl_path.with_name(f"metrics.{stamp}.jsonl")
            os.replace(self.jsonl_path, kept)
            logger.info("previous run's metrics kept as %s", kept)

    def _resume(self, resumed: Sequence[Mapping[str, Any]]) -> None:
        """Continue after the checkpointed records; later rounds (redone) go aside."""
        self.records = [dict(r) for r in resumed]
        last = max((int(r["round"]) for r in self.records), default=-1)
        if self.jsonl_path.is_file():
            lines = self.jsonl_path.read_text().splitlines()
            redone = [ln for ln in lines if ln.strip() and _round_of(ln) > last]
            if redone:
                # Rounds after the checkpoint are run again: their first records
                # (a round in flight when the server died) are kept, not mixed in.
                with (self.output_dir / METRICS_REDONE).open("a") as f:
                    f.writelines(ln + "\n" for ln in redone)
        partial = self.jsonl_path.with_name(METRICS_JSONL + ".partial")
        partial.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        os.replace(partial, self.jsonl_path)
        self._write_csv()

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` now (a run that dies keeps every finished round)."""
        row = {k: _plain(v) for k, v in record.items()}
        self.records.append(row)
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.records:
            columns += [k for k in row if k not in columns]
        with self.csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.records)


def _round_of(line: str) -> float:
    """The round of a metrics line; a line cut short by a crash counts as after all."""
    try:
        return float(json.loads(line)["round"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    return value


ROUND_COLUMNS: Sequence[tuple[str, str]] = (
    ("round", "round"),
    ("node", "partition-id"),
    ("device", "device"),
    ("cut", "cut-layer"),
    ("status", "status"),
    ("train loss", "train-loss"),
    ("eval ppl", "eval-perplexity"),
    # KOALA: each small architecture's held-out perplexity beside the large model's
    *((f"small-{k} ppl", f"small-{k}-eval-perplexity") for k in range(4)),
    ("agree", "eval-teacher-agreement"),
    ("MB up", "measured-bytes-up"),
    ("wall s", "measured-round-s"),
    ("model. delay s", "modelled-delay-s"),
    ("model. energy J", "modelled-energy-j"),
)


def print_report(
    records: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    console: Console | None = None,
) -> None:
    """Print the per-round table and the run's summary lines."""
    # Streamed logs (`flwr run --stream`) are not a terminal; rich would squeeze them to 80.
    console = console or Console(width=None if Console().is_terminal else 132)
    table = Table(title="splitkd-flwr rounds")
    present = [
        (title, key) for title, key in ROUND_COLUMNS if any(key in r for r in records)
    ]
    for title, _ in present:
        table.add_column(title, justify="right")
    for record in records:
        table.add_row(*(format_value(key, record.get(key)) for _, key in present))
    console.print(table)
    for key, value in summary.items():
        console.print(f"{key}: {format_value(key, value)}")


def format_value(key: str, value: Any) -> str:
    """``value`` rounded for people (4 significant digits; bytes in MB); the JSONL keeps all."""
    if value is None:
        return "-"
    if key.endswith("bytes-up"):
        return f"{value / 1e6:.2f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def read_records(output_dir: Path) -> list[dict[str, Any]]:
    """The per-round records a run wrote to ``output_dir``."""
    path = output_dir / METRICS_JSONL
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_JSONL} in {output_dir}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_rounds(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Held-out perplexity, and measured vs modelled round time, per round, as a PNG."""
    import matplotlib  # noqa: PLC0415 - only runs that plot pay for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rounds = [r["round"] for r in records if "eval-perplexity" in r]
    perplexity = [r["eval-perplexity"] for r in records if "eval-perplexity" in r]
    trained = [r for r in records if r.get("status") == "ok"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(rounds, perplexity, marker="o", label="student")
    top.set_yscale("log")
    top.set_ylabel("held-out perplexity")
    top.grid(True, which="both", alpha=0.3)
    x = [r["round"] for r in trained]
    bottom.bar(x, [r.get("measured-round-s", 0.0) for r in trained], label="measured s")
    if any("modelled-delay-s" in r for r in trained):
        twin = bottom.twinx()
        twin.plot(
            x, [r.get("modelled-delay-s") for r in trained], "r.-", label="modelled s"
        )
        twin.set_ylabel("modelled delay (s)", color="r")
    bottom.set_xlabel("round")
    bottom.set_ylabel("measured round time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Per-round metrics on disk and `splitkd report`."""

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from splitkd_flwr.cli import app
from splitkd_flwr.flower.report import MetricsLog, read_records


def _write_run(out: Path) -> None:
    log = MetricsLog(out)
    log.append({"round": 0, "status": "initial", "eval-perplexity": 900.0})
    for r in (1, 2):
        log.append(
            {
                "round": r,
                "status": "ok",
                "partition-id": r - 1,
                "cut-layer": 3,
                "eval-perplexity": 900.0 / (r + 1),
                "measured-round-s": 2.5,
                "modelled-delay-s": 40.0,
                "modelled-energy-j": float("nan"),
            }
        )
    (out / "summary.json").write_text(json.dumps({"final student perplexity": 300.0}))


def test_metrics_are_jsonl_and_csv_with_nan_as_empty(tmp_path: Path) -> None:
    _write_run(tmp_path)
    records = read_records(tmp_path)
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[1]["modelled-energy-j"] is None  # JSON has no NaN
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[2]["eval-perplexity"] == "300.0" and rows[0]["cut-layer"] == ""


def test_report_command_prints_the_rounds_and_writes_a_plot(tmp_path: Path) -> None:
    _write_run(tmp_path)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "final student perplexity: 300" in result.output
    assert (tmp_path / "rounds.png").stat().st_size > 10_000


def test_report_of_a_missing_run_says_what_is_missing(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code != 0
    assert "no metrics.jsonl" in result.output

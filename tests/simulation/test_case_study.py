"""Tests of the case study: the comparison's invariants and the `splitkd case-study` / `plan` commands."""

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from splitkd_flwr.cli import app
from splitkd_flwr.simulation.case_study import CaseStudyConfig, run_case_study


def test_methods_see_the_same_rounds_and_the_proposed_plan_keeps_its_bound() -> None:
    # Prepare
    config = CaseStudyConfig(rounds=20, delay_slack=0.3)
    # Execute
    result = run_case_study(config)
    # Assert
    for noise in config.noises:
        ids = {
            m: result.column("partition_id", noise, m).tolist()
            for m in ("proposed", "server-only", "device-only")
        }
        assert (
            ids["proposed"]
            == ids["server-only"]
            == ids["device-only"]
            == [r % 10 for r in range(20)]
        )
        assert set(result.column("cut_layer", noise, "server-only")) == {1}
        assert set(result.column("cut_layer", noise, "device-only")) == {15}
        proposed = result.column("delay_s", noise, "proposed")
        fastest = result.column(
            "delay_s", noise, "server-only"
        )  # cut 1 at the top clock: the least delay
        assert np.all(proposed <= 1.3 * fastest * (1 + 1e-9))
        assert np.all(
            result.column("energy_j", noise, "proposed")
            <= result.column("energy_j", noise, "server-only")
        )
    summary = result.summary()
    assert (
        summary["poor"]["server-only_delay_s"] > summary["good"]["server-only_delay_s"]
    )


def test_zero_slack_reproduces_the_least_delay() -> None:
    result = run_case_study(
        CaseStudyConfig(rounds=10, noises=("normal",), delay_slack=0.0)
    )
    np.testing.assert_allclose(
        result.column("delay_s", "normal", "proposed"),
        result.column("delay_s", "normal", "server-only"),
        rtol=1e-9,
    )


def test_case_study_command_writes_csv_figures_and_tables(tmp_path: Path) -> None:
    # Execute
    out = tmp_path / "cs"
    res = CliRunner().invoke(
        app,
        [
            "case-study",
            "--output-dir",
            str(out),
            "--rounds",
            "6",
            "--no-sweeps",
            "--cluster-sizes",
            "1,5",
            "--cluster-passes",
            "2",
        ],
    )
    # Assert
    assert res.exit_code == 0, res.output
    for name in (
        "case_study.csv",
        "fig3_delay.png",
        "fig4_energy.png",
        "summary.md",
        "config.json",
        "cluster_sweep.csv",
        "cluster_sweep.png",
    ):
        assert (out / name).stat().st_size > 0
    assert (out / "fig3_delay.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(out / "case_study.csv")))
    assert len(rows) == 3 * 3 * 6  # noises x methods x rounds
    assert all(
        0 < float(r["delay_s"]) < 1e6 and 0 < float(r["energy_j"]) < 1e8 for r in rows
    )
    summary = (out / "summary.md").read_text()
    assert ">= 16 %" in summary and "Poor" in summary
    assert "Clustered rounds vs K" in summary
    cluster_rows = list(csv.DictReader(open(out / "cluster_sweep.csv")))
    assert len(cluster_rows) == 2 * 2 * 5  # sizes x passes x methods


@pytest.mark.parametrize(
    "args",
    [["--delay-bound-s", "400"], ["--uplink-mbps", "300", "--device", "orin-nx-0.76"]],
)
def test_plan_command_prints_the_plans(args: list[str]) -> None:
    res = CliRunner().invoke(app, ["plan", *args])
    assert res.exit_code == 0, res.output
    assert "EnergyOptimal" in res.output and "cut layer" in res.output


def test_plan_command_rejects_an_unknown_device() -> None:
    res = CliRunner().invoke(app, ["plan", "--device", "tpu"])
    assert res.exit_code != 0 and "unknown device profile" in res.output


def test_sweeps_are_small_and_named(tmp_path: Path) -> None:
    from splitkd_flwr.simulation.case_study import sensitivity, tradeoff

    config = replace(CaseStudyConfig(rounds=5), noises=("normal",))
    points = tradeoff(config, [0.0, 1.0])
    assert (
        points[0]["energy_j"] >= points[1]["energy_j"]
        and points[0]["delay_s"] <= points[1]["delay_s"]
    )
    rows = sensitivity(config)
    assert {r["parameter"] for r in rows} >= {"utilisation eta (x)", "delay slack"}

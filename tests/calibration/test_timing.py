"""Tests of the profiler and calibration file on tiny models (timings are not asserted, only their use)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from splitkd_flwr.calibration.fleet import calibrated_profile, fleet_toml
from splitkd_flwr.calibration.timing import (
    MachineProfile,
    OpTiming,
    cost_model_for,
    fit_throughput,
    profile_machine,
    resolve_clock,
)
from splitkd_flwr.commands.calibrate import calibrate as calibrate_command
from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.simulation.devices import DEFAULT_PROFILES, load_fleet
from splitkd_flwr.split.models import load_causal_lm

VOCAB = 64


def _llama(layers: int, hidden: int) -> torch.nn.Module:
    return load_causal_lm(
        {
            "model_type": "llama",
            "vocab_size": VOCAB,
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 2 * hidden,
            "max_position_embeddings": 32,
            "tie_word_embeddings": False,
            "use_cache": False,
        }
    )


@pytest.fixture(scope="module")
def measured() -> tuple[MachineProfile, float]:
    torch.manual_seed(0)
    teacher, student = _llama(2, 32), _llama(3, 16)
    cost = cost_model_for(teacher, student, batch_size=2, seq_len=8)
    result = profile_machine(
        teacher, student, batch_size=2, seq_len=8, repeats=1, cuts=[1, 2]
    )
    return result, float(cost.device_flops[0] + cost.server_flops[0])


def test_ops_cover_one_unsplit_step_with_the_cost_models_flops(
    measured: tuple[MachineProfile, float],
) -> None:
    # Prepare
    result, step_flops = measured

    # Assert: student layers + head forward and backward, teacher layers + head forward
    names = [op.name for op in result.ops]
    assert names[:2] == ["student.layer0.forward", "student.layer0.backward"]
    assert len(names) == 2 * (3 + 1) + (2 + 1) and names[-1] == "teacher.head.forward"
    assert sum(op.flops for op in result.ops) == pytest.approx(
        step_flops
    )  # no second FLOP formula
    assert all(op.seconds > 0 for op in result.ops)


def test_per_cut_prediction_is_cost_model_flops_over_fit(
    measured: tuple[MachineProfile, float],
) -> None:
    result, step_flops = measured
    assert [c.cut for c in result.cuts] == [1, 2]
    for c in result.cuts:
        assert c.device_s > 0 and c.server_s > 0
        assert c.predicted_step_s == pytest.approx(step_flops / result.effective_flops)
    assert result.cuts[0].predicted_device_s < result.cuts[1].predicted_device_s


def test_fit_is_total_flops_over_total_seconds() -> None:
    ops = [OpTiming("a", 6e9, 1.0), OpTiming("b", 2e9, 3.0)]
    assert fit_throughput(ops) == pytest.approx(2e9)
    with pytest.raises(ValueError, match="no measured time"):
        fit_throughput([])


def test_calibration_file_loads_as_a_fleet(
    tmp_path: Path, measured: tuple[MachineProfile, float]
) -> None:
    # Prepare
    result, _ = measured
    calibrated = calibrated_profile(result, "cpu-host", "rtx4090", 'CPU "test"')

    # Execute
    path = tmp_path / "profile.toml"
    path.write_text(fleet_toml(result, calibrated, "rtx4090", as_server=True))
    fleet = load_fleet(path)

    # Assert: the planner's server now has the measured throughput
    server = fleet.server_profile
    assert server.name == "cpu-host" and server.hardware == 'CPU "test"'
    assert server.peak_flops * server.utilisation == pytest.approx(
        result.effective_flops, rel=1e-5
    )
    assert server.kappa == DEFAULT_PROFILES["rtx4090"].kappa


def test_calibration_refuses_impossible_profiles(
    measured: tuple[MachineProfile, float],
) -> None:
    result, _ = measured
    fast = MachineProfile(**{**result.__dict__, "effective_flops": 1e15})
    with pytest.raises(ConfigError, match="higher peak"):
        calibrated_profile(fast, "x", "rtx4090", "cpu")
    with pytest.raises(ConfigError, match="unknown base profile"):
        calibrated_profile(result, "x", "h100", "cpu")
    with pytest.raises(ConfigError, match="profile name"):
        calibrated_profile(result, "my host", "rtx4090", "cpu")


def test_clock_choice() -> None:
    assert resolve_clock(torch.device("cpu"), "auto") == "cpu"  # one thread in tests
    assert resolve_clock(torch.device("cpu"), "wall") == "wall"
    with pytest.raises(ValueError, match="CPU work only"):
        resolve_clock(torch.device("cuda"), "cpu")
    with pytest.raises(ValueError, match="one of auto, wall, cpu"):
        resolve_clock(torch.device("cpu"), "tsc")


def test_command_writes_a_profile(tmp_path: Path) -> None:
    # Prepare: a CLI group holding the command, as `splitkd` does
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command()(calibrate_command)
    out = tmp_path / "p.toml"

    # Execute
    result = CliRunner().invoke(
        app,
        [
            "calibrate",
            "--output",
            str(out),
            "--batch-size",
            "1",
            "--seq-len",
            "8",
            "--repeats",
            "1",
            "--cuts",
            "8",
            "--energy-meter",
            "none",
            "--name",
            "here",
        ],
    )

    # Assert
    assert result.exit_code == 0, result.output
    assert "GFLOP/s" in result.output and "  8 " in result.output
    assert load_fleet(out).server == "here"
    bad = CliRunner().invoke(app, ["calibrate", "--output", str(out), "--cuts", "16"])
    assert bad.exit_code != 0 and "outside 1..15" in bad.output

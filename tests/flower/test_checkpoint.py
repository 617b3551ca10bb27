"""Checkpoint files: exact round trips, atomic writes, no pickle; metrics kept on resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from splitkd_flwr.cli import app
from splitkd_flwr.commands.simulate import simulation_run_config
from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.flower.checkpoint import (
    STATE_FILE,
    Checkpoint,
    CheckpointStore,
    join_tensors,
    rng_state,
    set_rng_state,
    split_tensors,
)
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.report import METRICS_REDONE, MetricsLog, read_records
from splitkd_flwr.flower.run import output_dir_of


def _trained_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(2):
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
    return model, optimizer


def _state(model, optimizer) -> dict:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def test_optimizer_state_round_trips_exactly(tmp_path: Path) -> None:
    # Prepare
    model, optimizer = _trained_optimizer()
    store = CheckpointStore(tmp_path)

    # Execute
    store.save(Checkpoint(2, _state(model, optimizer), [{"round": 0}], {"seed": 0}))
    loaded = store.latest()

    # Assert: same keys (int parameter ids, tuple betas), bit-identical tensors.
    fresh_model, fresh = _trained_optimizer()
    fresh.load_state_dict(loaded.state["optimizer"])
    want, got = optimizer.state_dict(), fresh.state_dict()
    assert got["param_groups"] == want["param_groups"]
    assert isinstance(got["param_groups"][0]["betas"], tuple)
    assert got["state"].keys() == want["state"].keys() == {0, 1, 2, 3}
    for index, moments in want["state"].items():
        for key, value in moments.items():
            assert torch.equal(got["state"][index][key], value)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state["model"][name], tensor)
    assert loaded.server_round == 2 and loaded.records == [{"round": 0}]


def test_rng_states_are_restored() -> None:
    saved = split_tensors(rng_state(), tensors := {}, "rng")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(7), np.random.rand(7), random.random()  # move every generator on

    set_rng_state(join_tensors(json.loads(json.dumps(saved)), tensors))

    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_objects_that_would_need_pickle_are_refused() -> None:
    with pytest.raises(ConfigError, match="neither a tensor nor a JSON value"):
        split_tensors({"a": {"b": object()}}, {})


def test_newest_complete_checkpoint_wins_and_a_partial_one_is_ignored(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path)
    for server_round in (1, 2):
        store.save(Checkpoint(server_round, {"x": torch.ones(2)}, [], {}))
    # A server killed while writing round 3 leaves only a partial folder.
    partial = store.root / "round-0003.partial"
    partial.mkdir()
    (partial / STATE_FILE).write_text("{truncated")

    latest = store.latest()

    assert latest.server_round == 2
    assert [p.name for p in store.root.iterdir()] == sorted(
        ["round-0002", "round-0003.partial"]
    )  # older complete ones are removed
    store.clear()
    assert store.latest() is None


def test_a_fresh_run_keeps_the_previous_metrics_and_a_resume_appends(
    tmp_path: Path,
) -> None:
    # A dead run logged rounds 0..3; its checkpoint is after round 2.
    first = MetricsLog(tmp_path)
    for r in range(4):
        first.append({"round": r, "status": "ok"})
    checkpointed = first.records[:3]
    with first.jsonl_path.open("a") as f:
        f.write('{"round": 4, "stat')  # the server died while writing a line

    resumed = MetricsLog(tmp_path, checkpointed)
    resumed.append({"round": 3, "status": "ok", "again": True})

    assert [r["round"] for r in read_records(tmp_path)] == [0, 1, 2, 3]
    assert read_records(tmp_path)[-1]["again"] is True
    redone = (tmp_path / METRICS_REDONE).read_text().splitlines()
    assert [json.loads(line)["round"] for line in redone[:1]] == [3]
    assert redone[1] == '{"round": 4, "stat'  # kept aside as it was

    MetricsLog(tmp_path)  # a new run in the same folder
    kept = [p for p in tmp_path.glob("metrics.*.jsonl") if p.name != METRICS_REDONE]
    assert len(kept) == 1 and len(kept[0].read_text().splitlines()) == 4
    assert read_records(tmp_path) == []


def test_simulate_resume_reuses_the_saved_run_config(tmp_path: Path) -> None:
    saved = RunConfig(num_rounds=4, output_dir=str(tmp_path), planner="fixed")
    output_dir_of(saved)  # writes run-config.json, as every run does

    resumed = simulation_run_config(Path("ignored"), None, tmp_path, {"num-rounds": 6})

    config = RunConfig.from_run_config(resumed)
    assert config.resume and config.planner == "fixed" and config.num_rounds == 6
    assert config.output_dir == str(tmp_path.resolve())
    fresh = simulation_run_config(tmp_path / "new", None, None, {})
    assert fresh["num-rounds"] == 10 and "resume" not in fresh
    with pytest.raises(click.BadParameter, match="no run-config.json"):
        simulation_run_config(tmp_path, None, tmp_path / "nothing", {})


def test_a_relative_output_dir_from_set_is_made_absolute_where_it_was_typed(
    tmp_path: Path, monkeypatch
) -> None:
    # The ServerApp runs in the SuperLink's working directory, not the user's.
    monkeypatch.chdir(tmp_path)
    config = simulation_run_config(
        Path("ignored"), None, None, {"output-dir": "runs/a"}
    )
    assert config["output-dir"] == str(tmp_path / "runs" / "a")


def test_simulate_refuses_a_fresh_run_over_a_checkpoint_before_starting(
    tmp_path: Path,
) -> None:
    model, optimizer = _trained_optimizer()
    CheckpointStore(tmp_path).save(
        Checkpoint(2, _state(model, optimizer), [{"round": 0}], {})
    )
    result = CliRunner().invoke(
        app, ["simulate", "--rounds", "1", "--output-dir", str(tmp_path)]
    )
    # Exit code 2 comes from the config check, before a SuperLink or a model starts.
    assert result.exit_code == 2, result.output
    assert "holds a checkpoint after round 2" in result.output
    assert "resume" in result.output

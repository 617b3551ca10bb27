"""Private device layers (``device-private-layers``): a real round loop with in-process devices.

The real strategy, client handlers and data plane run (LoopbackGrid in place of
Flower's processes), in both split modes. What is checked: the messages carry no private
tensor, the server's copy stays the initial weights, the device's own copy persists and
trains, the server's part of a round is the same as without private layers, deployment
uses the device's copy; a planner's cut at or below the private layers is refused.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from splitkd_flwr.core.errors import ConfigError, ModelError, RoundFailedError
from splitkd_flwr.core.types import DeviceState
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.simulation.planning import Plan, Planner
from splitkd_flwr.split.partition import device_param_names, server_param_names
from splitkd_flwr.split.ushape import ushape_device_names, ushape_server_names
from splitkd_flwr.split_kd import protocol
from splitkd_flwr.split_kd.loopback import LoopbackGrid
from splitkd_flwr.split_kd.private_layers import (
    load_private,
    private_path,
    save_private,
)
from splitkd_flwr.split_kd.run import build_split_kd
from tests.apps.tiny import save_tiny_pair

_TIMEOUT_S = 120.0
_CUT = 3


def _config(models: Path, **overrides: object) -> RunConfig:
    teacher_dir, student_dir = save_tiny_pair(models)
    settings = {
        "num_rounds": 2,
        "max_batches_per_epoch": 2,
        "batch_size": 4,
        "seq_len": 16,
        "eval_batches": 1,
        "planner": "fixed",
        "cut_layer": _CUT,
        "scenario": "none",
        "server_clock": "none",
        "server_energy_meter": "none",
        "teacher": str(teacher_dir),
        "student": str(student_dir),
    }
    return RunConfig(**{**settings, **overrides})


def _sides(config: RunConfig, student) -> tuple[set[str], set[str]]:
    """The student keys on the device's side and on the server's at the cut."""
    if config.split_mode == "u-shape":
        return (
            set(ushape_device_names(student, _CUT)),
            set(ushape_server_names(student, _CUT)),
        )
    return set(device_param_names(student, _CUT)), set(
        server_param_names(student, _CUT)
    )


def _rounds(config: RunConfig, work: Path, rounds: int, deploy: bool = False):
    """Run ``rounds`` rounds on one device; return the server's student states (initial,
    then per round), the device's private layers file per round, the grid's log, the
    device's cache dir and deployment's metrics."""
    states, own = [], []
    path = private_path(work / "devices" / "partition-0", 1)
    with build_split_kd(config, work / "run") as strategy:
        grid = LoopbackGrid(1, work / "devices")
        strategy.refresh_nodes(grid, _TIMEOUT_S)
        states.append(
            {k: v.clone() for k, v in strategy.server.student.state_dict().items()}
        )
        for server_round in range(1, rounds + 1):
            train_round = strategy.configure_train(server_round, grid)
            replies = strategy.collect_replies(grid, train_round, _TIMEOUT_S)
            strategy.aggregate_train(train_round, replies)
            states.append(
                {k: v.clone() for k, v in strategy.server.student.state_dict().items()}
            )
            own.append(load_file(str(path)) if path.exists() else None)
        deployed = strategy.deploy(grid, _TIMEOUT_S) if deploy else None
    return states, own, grid, work / "devices" / "partition-0", deployed


@pytest.fixture(scope="module", params=["seed", "u-shape"])
def private_run(tmp_path_factory: pytest.TempPathFactory, request):
    """Two rounds and deployment with ``device-private-layers = 2`` (shared: ~10 s)."""
    root = tmp_path_factory.mktemp("private")
    config = _config(root / "models", device_private_layers=2, split_mode=request.param)
    return config, *_rounds(config, root / "work", 2, deploy=True)


def test_private_layers_stay_on_the_device_and_keep_training(private_run) -> None:
    # Execute (the fixture ran the rounds)
    config, states, own_per_round, grid, cache_dir, deployed = private_run

    # Assert: no train message or reply carries a private tensor
    student = AutoModelForCausalLM.from_pretrained(config.student)
    private = set(device_param_names(student, 2))
    device_side, _ = _sides(config, student)
    public = device_side - private
    assert any("embed" in n for n in private) and public and private <= device_side
    trains = [e for e in grid.log if e.message.metadata.message_type == "train"]
    assert len(trains) == 2
    # the initial private layers go to the device until it keeps its own (round 1 only)
    assert [protocol.PRIVATE_INIT in e.message.content for e in trains] == [True, False]
    sent_bytes = [
        sum(r.count_bytes() for r in e.message.content.array_records.values())
        for e in trains
    ]
    assert sent_bytes[1] < sent_bytes[0]
    for exchange in trains:
        down = exchange.message.content[protocol.DEVICE_WEIGHTS].to_torch_state_dict()
        up = exchange.reply.content[protocol.DEVICE_WEIGHTS].to_torch_state_dict()
        assert set(down) == public and set(up) == public
    # the server's copy of the private layers is the initial one after every round
    initial, after_1, after_2 = states
    for state in (after_1, after_2):
        for name in private:
            assert torch.equal(state[name], initial[name]), name
        # while the uploaded layers did change
        assert any(not torch.equal(state[n], initial[n]) for n in public)
    # the device's copy persists and trains in both rounds
    own_1, own = own_per_round
    assert set(own_1) == set(own) == private
    assert all(not torch.equal(own_1[n], initial[n]) for n in private)
    assert all(not torch.equal(own[n], own_1[n]) for n in private)
    # deployment: the device's deployed student holds its own private layers
    assert deployed is not None
    kept = AutoModelForCausalLM.from_pretrained(cache_dir / "deployed-student")
    kept_state = kept.state_dict()
    for name in private:
        assert torch.equal(kept_state[name], own[name]), name
    for name in public:
        assert torch.equal(kept_state[name], after_2[name]), name


def test_server_part_of_a_round_is_unchanged(tmp_path: Path, private_run) -> None:
    # Execute: round 1 without private layers (the same tiny models, seed and data)
    private_cfg, kept, (own, _), *_ = private_run
    plain_cfg = replace(private_cfg, device_private_layers=0)
    plain, _, _, _, _ = _rounds(plain_cfg, tmp_path / "plain", 1)

    # Assert: the server's update (blocks >= cut, norm, head) is the same, and so is
    # every device tensor: uploaded ones on the server, private ones on the device
    student = AutoModelForCausalLM.from_pretrained(private_cfg.student)
    device_side, server_side = _sides(private_cfg, student)
    for name in server_side:
        assert torch.allclose(plain[1][name], kept[1][name], atol=1e-6), name
    private = set(device_param_names(student, 2))
    for name in device_side - private:
        assert torch.allclose(plain[1][name], kept[1][name], atol=1e-6), name
    for name in private:
        assert torch.allclose(plain[1][name], own[name], atol=1e-6), name
        assert not torch.equal(kept[1][name], own[name]), name


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"device_private_layers": -1}, "device-private-layers"),
        ({"device_private_layers": 4, "cut_layer": 4}, "cut-layer"),
        ({"device_private_layers": 1, "lora_rank": 4}, "lora-rank"),
        ({"device_private_layers": 1, "cluster_size": 2}, "cluster-size"),
    ],
)
def test_config_refuses_unsupported_private_layers(
    overrides: dict[str, object], named: str
) -> None:
    base = {"planner": "fixed", "cut_layer": 4}
    with pytest.raises(ConfigError, match=named):
        RunConfig(**{**base, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        {"planner": "energy-optimal", "cut_layer": 1},
        {"planner": "server-only"},
        {"split_mode": "u-shape"},
    ],
)
def test_config_accepts_private_layers_with_any_planner_and_ushape(
    overrides: dict[str, object],
) -> None:
    config = RunConfig(
        **{"planner": "fixed", "cut_layer": 4, **overrides}, device_private_layers=2
    )
    assert config.device_private_layers == 2


class ShallowPlanner(Planner):
    """A plug-in planner that ignores ``min_cut_layer``: it always cuts at 1."""

    def plan(self, device: DeviceState, server_round: int) -> Plan:
        return Plan(cut_layer=1)


def test_a_plan_below_the_private_layers_is_refused_before_the_round(
    tmp_path: Path,
) -> None:
    # Prepare
    config = _config(
        tmp_path / "models",
        device_private_layers=2,
        planner=f"{__name__}:ShallowPlanner",
    )

    # Execute
    with build_split_kd(config, tmp_path / "run") as strategy:
        grid = LoopbackGrid(1, tmp_path / "devices")
        strategy.refresh_nodes(grid, _TIMEOUT_S)
        with pytest.raises(ConfigError, match="device-private-layers = 2") as err:
            strategy.configure_train(1, grid)

    # Assert: the message names the planner; nothing was sent to the device
    assert "ShallowPlanner" in str(err.value) and "cut 1" in str(err.value)
    assert not [e for e in grid.log if e.message.metadata.message_type == "train"]


def test_private_init_noise_moves_the_first_round_start_off_the_servers_copy(
    tmp_path: Path,
) -> None:
    # Prepare
    initial = {"w": torch.randn(256, 64) * 0.02, "norm": torch.ones(2048)}

    # Execute: two devices' first rounds, then one's second round
    first = load_private(tmp_path / "a", 1, initial, noise=0.1)
    other = load_private(tmp_path / "b", 1, initial, noise=0.1)
    save_private(tmp_path / "a", 1, first)
    again = load_private(tmp_path / "a", 1, initial, noise=0.1)

    # Assert: off the initial weights by about 10 % of each tensor's RMS, differently
    # per device (a seed the server never sees); noise only at the start of a run
    for name, value in initial.items():
        shift = (first[name] - value).pow(2).mean().sqrt() / value.pow(2).mean().sqrt()
        assert 0.08 < float(shift) < 0.12, name
        assert not torch.equal(first[name], other[name])
        assert torch.equal(again[name], first[name])
    assert load_private(tmp_path / "c", 1, initial) is initial


def test_a_device_that_lost_its_private_layers_fails_once_then_gets_them_again(
    tmp_path: Path,
) -> None:
    # Prepare: one device commits round 1, then its cache loses the private layers
    config = _config(tmp_path / "models", device_private_layers=2, num_rounds=3)
    kept = private_path(tmp_path / "devices" / "partition-0", 1)
    with build_split_kd(config, tmp_path / "run") as strategy:
        grid = LoopbackGrid(1, tmp_path / "devices")
        strategy.refresh_nodes(grid, _TIMEOUT_S)
        outcomes = []
        for server_round in (1, 2, 3):
            if server_round == 2:
                kept.unlink()
            train_round = strategy.configure_train(server_round, grid)
            replies = strategy.collect_replies(grid, train_round, _TIMEOUT_S)
            try:
                strategy.aggregate_train(train_round, replies)
                outcomes.append("ok")
            except RoundFailedError as err:
                strategy.abort_train(train_round)
                outcomes.append(str(err))

    # Assert: round 2 (no private-init, no file) fails naming why; round 3 gets it again
    trains = [e for e in grid.log if e.message.metadata.message_type == "train"]
    assert [protocol.PRIVATE_INIT in e.message.content for e in trains] == [
        True,
        False,
        True,
    ]
    assert outcomes[0] == outcomes[2] == "ok"
    assert "holds no private layers" in outcomes[1]
    assert "private-init" in outcomes[1]
    assert kept.exists()
    with pytest.raises(ModelError, match="holds no private layers"):
        load_private(tmp_path / "empty", 1, None)

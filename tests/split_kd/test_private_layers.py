"""Private device layers (``device-private-layers``): a real round loop with in-process devices.

The real strategy, client handlers and gRPC data plane run (LoopbackGrid in place of
Flower's processes). What is checked: the messages carry no private tensor, the server's
copy stays the initial weights, the device's own copy persists and trains, the server's
part of a round is the same as without private layers, deployment uses the device's copy.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.split.partition import device_param_names, server_param_names
from splitkd_flwr.split_kd import protocol
from splitkd_flwr.split_kd.loopback import LoopbackGrid
from splitkd_flwr.split_kd.private_layers import private_path
from splitkd_flwr.split_kd.run import build_split_kd
from tests.apps.tiny import save_tiny_pair

_TIMEOUT_S = 120.0
_CUT = 3


def _config(models: Path, **overrides: object) -> RunConfig:
    teacher_dir, student_dir = save_tiny_pair(models)
    return RunConfig(
        num_rounds=2,
        max_batches_per_epoch=2,
        batch_size=4,
        seq_len=16,
        eval_batches=1,
        planner="fixed",
        cut_layer=_CUT,
        scenario="none",
        server_clock="none",
        server_energy_meter="none",
        teacher=str(teacher_dir),
        student=str(student_dir),
        **overrides,
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


@pytest.fixture(scope="module")
def private_run(tmp_path_factory: pytest.TempPathFactory):
    """Two rounds and deployment with ``device-private-layers = 2`` (shared: ~10 s)."""
    root = tmp_path_factory.mktemp("private")
    config = _config(root / "models", device_private_layers=2)
    return config, *_rounds(config, root / "work", 2, deploy=True)


def test_private_layers_stay_on_the_device_and_keep_training(private_run) -> None:
    # Execute (the fixture ran the rounds)
    config, states, own_per_round, grid, cache_dir, deployed = private_run

    # Assert: no train message or reply carries a private tensor
    student = AutoModelForCausalLM.from_pretrained(config.student)
    private = set(device_param_names(student, 2))
    public = set(device_param_names(student, _CUT)) - private
    assert any("embed" in n for n in private) and public
    trains = [e for e in grid.log if e.message.metadata.message_type == "train"]
    assert len(trains) == 2
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
    for name in server_param_names(student, _CUT):
        assert torch.allclose(plain[1][name], kept[1][name], atol=1e-6), name
    private = set(device_param_names(student, 2))
    for name in set(device_param_names(student, _CUT)) - private:
        assert torch.allclose(plain[1][name], kept[1][name], atol=1e-6), name
    for name in private:
        assert torch.allclose(plain[1][name], own[name], atol=1e-6), name
        assert not torch.equal(kept[1][name], own[name]), name


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"device_private_layers": -1}, "device-private-layers"),
        ({"device_private_layers": 2, "planner": "energy-optimal"}, "planner"),
        ({"device_private_layers": 4, "cut_layer": 4}, "cut-layer"),
        ({"device_private_layers": 1, "split_mode": "u-shape"}, "split-mode"),
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

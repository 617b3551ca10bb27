"""What a rolled-back round must leave untouched: the global student and its optimizer."""

import copy

import torch

from splitkd_flwr.split.server import SplitServer


def snapshot(server: SplitServer) -> tuple[dict, dict]:
    state = {k: v.clone() for k, v in server.student.state_dict().items()}
    return state, copy.deepcopy(server.optimizer.state_dict())


def assert_unchanged(server: SplitServer, snapshot: tuple[dict, dict]) -> None:
    state, optimizer_state = snapshot
    for name, tensor in server.student.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    now = server.optimizer.state_dict()["state"]
    assert now.keys() == optimizer_state["state"].keys()
    for index, moments in optimizer_state["state"].items():
        for key, value in moments.items():
            assert torch.equal(now[index][key], value), (index, key)

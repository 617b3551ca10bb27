"""Checkpoint and resume of a split-KD run, in process: a crash after round 2 of 4, resumed.

The Grid is the round-loop tests' stand-in (:class:`FakeGrid`); the strategy, the data
plane, the split step, the checkpoint files and the run skeleton are the real ones. The
end-to-end version under Flower's simulation engine is in tests/apps/test_resume.py.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import Workload
from splitkd_flwr.data.tokenizer import train_tokenizer
from splitkd_flwr.flower.checkpoint import CheckpointStore
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.run import run_strategy
from splitkd_flwr.simulation.planning import load_planner
from splitkd_flwr.simulation.selection import load_selector
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split_kd.assets import DeviceAssets
from splitkd_flwr.split_kd.dataplane import DataPlane
from splitkd_flwr.split_kd.strategy import SplitKD
from splitkd_flwr.transport.stream import DataPlaneServer
from tests.apps.tiny import tiny_llama
from tests.split_kd.test_round_loop import (
    CUT,
    LAYERS,
    VOCAB,
    Device,
    FakeGrid,
    _batches,
)


class ServerDied(Exception):
    """Stands for the ServerApp process dying (not a SplitKDError: nothing catches it)."""


def _run(out: Path, *, resume: bool, die_in_round: int | None = None) -> SplitServer:
    """One ServerApp lifetime: fresh models from the same seed, as a restarted process."""
    torch.manual_seed(0)
    teacher, student = tiny_llama(VOCAB, 32, 2), tiny_llama(VOCAB, 16, LAYERS)
    server = SplitServer(teacher, student, KDLoss(alpha=0.5, temperature=2.0), lr=1e-2)
    tokenizer = train_tokenizer(["a vehicle drives to the charger"] * 4, VOCAB)
    config = RunConfig(
        scenario="none",
        frame_timeout_s=5.0,
        num_rounds=4,
        output_dir=str(out),
        resume=resume,
        selector="random",
    )
    workload = Workload(LAYERS, batch_size=4, seq_len=12, batches_per_round=3)
    eval_batches = _batches()[:1]
    # Devices keep nothing between rounds but their weights, which come from the server.
    grid = FakeGrid(
        {7: Device(teacher, student, "ok"), 9: Device(teacher, student, "ok")}
    )

    def evaluate() -> dict[str, float]:
        if die_in_round is not None and server.optimizer.state:
            rounds_done = len({int(r["round"]) for r in log_rounds(out)})
            if rounds_done == die_in_round:  # the round trained; the server dies now
                raise ServerDied()
        return evaluate_lm(server.student, eval_batches)

    @contextmanager
    def build(config: RunConfig, output_dir: Path):
        stream = DataPlaneServer("127.0.0.1", 0, idle_timeout_s=5.0)
        try:
            yield SplitKD(
                config=config,
                server=server,
                data_plane=DataPlane(stream, stream.start()),
                selector=load_selector(config.selector, seed=0),
                planner=load_planner("fixed", workload, cut_layer=CUT),
                assets=DeviceAssets.pack(
                    student.config.to_json_string(),
                    tokenizer,
                    teacher.get_input_embeddings().weight,
                ),
                evaluate_fn=evaluate,
            )
        finally:
            stream.stop()

    run_strategy(grid, config, build)
    return server


def log_rounds(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    # Inside a ServerApp, Flower sets the run's identity that new messages carry.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_a_run_that_dies_in_round_3_resumes_to_the_same_student(tmp_path: Path) -> None:
    # Prepare: the uninterrupted run.
    whole = _run(tmp_path / "whole", resume=False)

    # Execute: die inside round 3 (trained, not yet logged), then resume.
    out = tmp_path / "crashed"
    with pytest.raises(ServerDied):
        _run(out, resume=False, die_in_round=3)
    assert CheckpointStore(out).latest().server_round == 2
    with pytest.raises(ConfigError, match="holds a checkpoint after round 2"):
        _run(out, resume=False)  # a fresh run never overwrites it
    resumed = _run(out, resume=True)

    # Assert: bit-identical student and optimizer, rounds 0..4 logged once each.
    for name, tensor in whole.student.state_dict().items():
        assert torch.equal(tensor, resumed.student.state_dict()[name]), name
    for index, moments in whole.optimizer.state_dict()["state"].items():
        for key, value in moments.items():
            assert torch.equal(
                value, resumed.optimizer.state_dict()["state"][index][key]
            )
    records = log_rounds(out)
    assert [r["round"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in records[1:]] == ["ok"] * 4
    whole_records = log_rounds(tmp_path / "whole")
    assert [r["node"] for r in records[1:]] == [r["node"] for r in whole_records[1:]]
    assert [r["train-loss"] for r in records[1:]] == [
        r["train-loss"] for r in whole_records[1:]
    ]
    assert not CheckpointStore(out).root.exists()  # finished: nothing to resume

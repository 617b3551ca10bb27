"""The clustered round loop without Flower's processes: K devices stream at once; drops.

The Grid is the stand-in of test_round_loop (:class:`FakeGrid`: each node a Python function
answering in its own thread, so the K devices really stream concurrently); the strategy, the
data plane's gRPC streams, the batched server steps and the commit are real.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from splitkd_flwr.core.types import Workload
from splitkd_flwr.data.tokenizer import train_tokenizer
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.loop import run_rounds
from splitkd_flwr.flower.report import MetricsLog
from splitkd_flwr.simulation.cluster_planning import InOrder
from splitkd_flwr.simulation.planning import load_planner
from splitkd_flwr.simulation.selection import load_selector
from splitkd_flwr.split.cluster import ClusterServer
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.partition import DevicePart
from splitkd_flwr.split_kd import protocol
from splitkd_flwr.split_kd.assets import DeviceAssets
from splitkd_flwr.split_kd.cluster import ClusterSplitKD
from splitkd_flwr.split_kd.dataplane import DataPlane, run_device_round
from splitkd_flwr.transport.stream import DataPlaneServer, DeviceSession
from tests.apps.tiny import tiny_llama
from tests.split_kd.snapshots import assert_unchanged, snapshot
from tests.split_kd.test_round_loop import FakeGrid

VOCAB, CUT, LAYERS = 300, 2, 4


def _batches(seed: int, n: int = 3) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    ids = [torch.randint(4, VOCAB, (4, 12), generator=generator) for _ in range(n)]
    return [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in ids]


class Dies(Exception):
    """The vehicle dies mid-round."""


class Vehicle:
    """A device with its own data; ``dies_after`` mini-batches it dies (stream aborted)."""

    def __init__(self, teacher, student, partition_id: int, dies_after=None) -> None:
        self.embedding = teacher.get_input_embeddings().weight.detach().clone()
        self.student = copy.deepcopy(student)
        self.partition_id = partition_id
        self.dies_after = dies_after
        self.assets_key = ""

    def __call__(self, msg: Message) -> Message:
        kind = msg.metadata.message_type
        if kind == protocol.QUERY_PROFILE:
            profile = {
                "partition-id": self.partition_id,
                "device": "agx-orin-1.3",
                "assets-key": self.assets_key,
            }
            return Message(
                RecordDict({protocol.PROFILE: ConfigRecord(profile)}), reply_to=msg
            )
        if kind == protocol.QUERY_PROVISION:
            self.assets_key = str(msg.content[protocol.ASSETS]["assets-key"])
            record = ConfigRecord({"assets-key": self.assets_key})
            return Message(RecordDict({protocol.PROFILE: record}), reply_to=msg)
        plan = protocol.RoundPlan.from_record(msg.content[protocol.PLAN])
        part = DevicePart.from_parts(self.embedding, self.student, plan.cut_layer)
        part.student.load_student_state_dict(
            msg.content[protocol.DEVICE_WEIGHTS].to_torch_state_dict()
        )
        optimizer = torch.optim.AdamW(part.student_parameters(), lr=plan.device_lr)
        batches = _batches(10 + self.partition_id)
        with DeviceSession(plan.address, plan.token, timeout_s=5.0) as session:
            if self.dies_after is not None:
                run_device_round(session, part, batches[: self.dies_after], optimizer)
                # leaving the session by an exception aborts the stream mid-round
                raise Dies(f"vehicle {self.partition_id} died")
            figures = run_device_round(session, part, batches, optimizer)
        weights = {k: v.detach() for k, v in part.student.student_state_dict().items()}
        records = {
            protocol.METRICS: MetricRecord(figures),
            protocol.DEVICE_WEIGHTS: ArrayRecord(weights),
        }
        return Message(RecordDict(records), reply_to=msg)


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    stream = DataPlaneServer("127.0.0.1", 0, idle_timeout_s=2.0, max_workers=8)
    plane = DataPlane(stream, stream.start())
    tokenizer = train_tokenizer(["a vehicle drives to the charger"] * 4, VOCAB)
    config = RunConfig(
        scenario="none",
        frame_timeout_s=2.0,
        cluster_size=3,
        cut_layer=CUT,
        planner="fixed",
    )
    workload = Workload(LAYERS, batch_size=4, seq_len=12, batches_per_round=3)

    def build(vehicles: dict[int, tuple[int, int | None]]):
        """A fresh (same-seeded) pair, server, strategy and grid of ``vehicles``:
        node -> (partition, dies_after)."""
        torch.manual_seed(0)
        teacher, student = tiny_llama(VOCAB, 32, 2), tiny_llama(VOCAB, 16, LAYERS)
        server = ClusterServer(teacher, student, KDLoss(), lr=1e-2)
        strategy = ClusterSplitKD(
            config=config,
            server=server,
            data_plane=plane,
            selector=load_selector("round-robin"),
            planner=load_planner("fixed", workload, cut_layer=CUT),
            assets=DeviceAssets.pack(
                student.config.to_json_string(),
                tokenizer,
                teacher.get_input_embeddings().weight,
            ),
            evaluate_fn=lambda: evaluate_lm(server.student, _batches(99, 1)),
            cluster_selector=InOrder(3),
        )
        grid = FakeGrid(
            {
                node: Vehicle(teacher, student, pid, dies)
                for node, (pid, dies) in vehicles.items()
            }
        )
        return server, strategy, grid

    yield build, MetricsLog(tmp_path)
    stream.stop()


def test_three_vehicles_commit_together_and_a_dead_one_is_removed_exactly(
    world,
) -> None:
    build, log = world
    # Prepare: vehicle 1 dies after its second mini-batch (its frames stepped its copy)
    server, strategy, grid = build({10: (0, None), 11: (1, 2), 12: (2, None)})
    survivors, survivors_strategy, survivors_grid = build(
        {10: (0, None), 12: (2, None)}
    )
    # Execute
    run_rounds(strategy, grid, num_rounds=1, timeout_s=20.0, metrics_log=log)
    run_rounds(
        survivors_strategy, survivors_grid, 1, 20.0, MetricsLog(log.output_dir / "b")
    )
    # Assert: the round committed without vehicle 1, and the record says so
    record = log.records[0]
    assert record["status"] == "ok" and record["cluster-size"] == 3
    assert record["cluster-kept"] == "0 2" and record["cluster-dropped"] == "1"
    assert (
        "died" in record["cluster-dropped-errors"]
        or "Transport" in record["cluster-dropped-errors"]
    )
    assert record["batches"] == 6 and record["server-steps"] >= 1
    # the student is the round of the survivors alone (up to the teacher's batched forward)
    for name, value in survivors.student.state_dict().items():
        torch.testing.assert_close(
            server.student.state_dict()[name], value, rtol=1e-5, atol=1e-7, msg=name
        )


def test_a_round_whose_every_member_dies_is_rolled_back(world) -> None:
    build, log = world
    server, strategy, grid = build({10: (0, 1), 11: (1, 1)})
    before = snapshot(server)
    run_rounds(strategy, grid, num_rounds=1, timeout_s=20.0, metrics_log=log)
    (record,) = log.records
    assert record["status"] == "rolled-back"
    assert "every member" in record["error"]
    assert_unchanged(server, before)

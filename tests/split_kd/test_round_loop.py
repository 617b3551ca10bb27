"""The split-KD round loop without Flower's processes: commit, every rollback path, silence.

The Grid here is a stand-in (:class:`FakeGrid`): each node is a Python function that
answers a message in a thread. Everything behind it is real: the strategy, the data
plane's gRPC stream, the split step on both sides, the rollback.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from splitkd_flwr.core.types import Workload
from splitkd_flwr.data.tokenizer import train_tokenizer
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.loop import run_rounds
from splitkd_flwr.flower.report import MetricsLog
from splitkd_flwr.simulation.planning import load_planner
from splitkd_flwr.simulation.selection import load_selector
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.partition import DevicePart
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split_kd import protocol
from splitkd_flwr.split_kd.assets import DeviceAssets
from splitkd_flwr.split_kd.dataplane import DataPlane, run_device_round
from splitkd_flwr.split_kd.loopback import ThreadedGrid
from splitkd_flwr.split_kd.strategy import SplitKD
from splitkd_flwr.transport.stream import DataPlaneServer, DeviceSession, Frame
from tests.apps.tiny import tiny_llama
from tests.split_kd.snapshots import assert_unchanged, snapshot

VOCAB, CUT, LAYERS = 300, 2, 4
Handler = Callable[[Message], Message | None]


class FakeGrid(ThreadedGrid):
    """Flower's Grid API over in-process nodes; a handler returning None never replies."""

    def __init__(self, nodes: dict[int, Handler]) -> None:
        super().__init__()
        self.nodes = nodes

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def answer(self, message: Message) -> Message | None:
        return self.nodes[message.metadata.dst_node_id](message)


def _batches() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    ids = [torch.randint(4, VOCAB, (4, 12), generator=generator) for _ in range(3)]
    return [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in ids]


class Device:
    """One vehicle: answers profile and provision, runs its side of a round as told."""

    def __init__(
        self, teacher: torch.nn.Module, student: torch.nn.Module, behaviour: str
    ) -> None:
        self.embedding = teacher.get_input_embeddings().weight.detach().clone()
        self.student = copy.deepcopy(student)
        self.behaviour = behaviour
        self.assets_key = ""

    def __call__(self, msg: Message) -> Message | None:
        kind = msg.metadata.message_type
        if kind == protocol.QUERY_PROFILE:
            profile = {"partition-id": 0, "device": "agx-orin-1.3"}
            profile["assets-key"] = self.assets_key
            return Message(
                RecordDict({protocol.PROFILE: ConfigRecord(profile)}), reply_to=msg
            )
        if kind == protocol.QUERY_PROVISION:
            self.assets_key = str(msg.content[protocol.ASSETS]["assets-key"])
            record = ConfigRecord({"assets-key": self.assets_key})
            return Message(RecordDict({protocol.PROFILE: record}), reply_to=msg)
        return self.train(msg)

    def train(self, msg: Message) -> Message | None:
        plan = protocol.RoundPlan.from_record(msg.content[protocol.PLAN])
        part = DevicePart.from_parts(self.embedding, self.student, plan.cut_layer)
        part.student.load_student_state_dict(
            msg.content[protocol.DEVICE_WEIGHTS].to_torch_state_dict()
        )
        optimizer = torch.optim.AdamW(part.student_parameters(), lr=plan.device_lr)
        with DeviceSession(plan.address, plan.token, timeout_s=5.0) as session:
            if self.behaviour == "bad-frame":
                session.exchange(Frame({"teacher_embeds": torch.zeros(1)}))
            run_device_round(session, part, _batches(), optimizer)
        if self.behaviour == "silent":
            return None
        if self.behaviour == "error":
            raise RuntimeError("the vehicle's disk is full")
        weights = part.student.student_state_dict()
        if self.behaviour == "nan-weights":
            name = next(iter(weights))
            weights[name] = weights[name] * float("nan")
        records: dict[str, Any] = {protocol.METRICS: MetricRecord({"device-x": 1.0})}
        if self.behaviour != "no-weights":
            records[protocol.DEVICE_WEIGHTS] = ArrayRecord(
                {k: v.detach() for k, v in weights.items()}
            )
        return Message(RecordDict(records), reply_to=msg)


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Inside a ServerApp, Flower sets the run's identity that new messages carry.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    torch.manual_seed(0)
    teacher, student = tiny_llama(VOCAB, 32, 2), tiny_llama(VOCAB, 16, LAYERS)
    server = SplitServer(teacher, student, KDLoss(alpha=0.5, temperature=2.0), lr=1e-2)
    stream = DataPlaneServer("127.0.0.1", 0, idle_timeout_s=2.0)
    plane = DataPlane(stream, stream.start())
    tokenizer = train_tokenizer(["a vehicle drives to the charger"] * 4, VOCAB)
    config = RunConfig(scenario="none", frame_timeout_s=2.0)
    workload = Workload(LAYERS, batch_size=4, seq_len=12, batches_per_round=3)
    eval_batches = _batches()[:1]

    def strategy() -> SplitKD:
        return SplitKD(
            config=config,
            server=server,
            data_plane=plane,
            selector=load_selector("round-robin", seed=0),
            planner=load_planner("fixed", workload, cut_layer=CUT),
            assets=DeviceAssets.pack(
                student.config.to_json_string(),
                tokenizer,
                teacher.get_input_embeddings().weight,
            ),
            evaluate_fn=lambda: evaluate_lm(server.student, eval_batches),
        )

    yield server, strategy, MetricsLog(tmp_path), (teacher, student)
    stream.stop()


def test_a_good_round_commits_and_is_logged(world) -> None:
    # Prepare
    server, strategy, log, (teacher, student) = world
    grid = FakeGrid({7: Device(teacher, student, "ok")})
    before = snapshot(server)

    # Execute
    run_rounds(strategy(), grid, num_rounds=1, timeout_s=10.0, metrics_log=log)

    # Assert
    (record,) = log.records
    assert record["status"] == "ok" and record["node"] == 7
    assert record["cut-layer"] == CUT and record["batches"] == 3
    assert record["device-x"] == 1.0 and "eval-perplexity" in record
    changed = [
        n
        for n, t in server.student.state_dict().items()
        if not torch.equal(t, before[0][n])
    ]
    assert "model.embed_tokens.weight" in changed  # the device's layers came back
    assert "lm_head.weight" in changed  # and the server stepped its own


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [
        ("error", "the device reported"),
        ("no-weights", "KeyError"),
        ("nan-weights", "NaN"),
        ("bad-frame", "data plane"),
        ("silent", "did not reply"),
    ],
)
def test_every_failed_round_is_rolled_back_exactly_and_the_next_one_commits(
    world, behaviour: str, words: str
) -> None:
    # Prepare: a good round first, so the optimizer holds state a failure could corrupt.
    server, strategy, log, (teacher, student) = world
    good = Device(teacher, student, "ok")
    bad = Device(teacher, student, behaviour)
    splitkd = strategy()
    run_rounds(splitkd, FakeGrid({1: good}), 1, timeout_s=10.0, metrics_log=log)
    before = snapshot(server)

    # Execute
    run_rounds(splitkd, FakeGrid({2: bad}), 1, timeout_s=3.0, metrics_log=log)

    # Assert: bit-identical to before the bad round, and the run goes on.
    failed = log.records[1]
    assert failed["status"] == "rolled-back" and words in failed["error"]
    assert_unchanged(server, before)
    assert server.cut_layer is None  # no round left open
    run_rounds(splitkd, FakeGrid({1: good}), 1, timeout_s=10.0, metrics_log=log)
    assert log.records[2]["status"] == "ok"


def test_no_connected_device_fails_the_round_before_anything_changes(world) -> None:
    server, strategy, log, _ = world
    before = snapshot(server)
    run_rounds(strategy(), FakeGrid({}), 1, timeout_s=1.0, metrics_log=log)
    assert log.records[0]["status"] == "rolled-back"
    assert "no provisioned device" in log.records[0]["error"]
    assert_unchanged(server, before)


def _smashed(b: int = 2, t: int = 12, **changes: torch.Tensor) -> Frame:
    """A frame of the right names for the world's models (d_t 32, d_s 16), with changes."""
    tensors = {
        "teacher_embeds": torch.zeros(b, t, 32),
        "student_hidden": torch.zeros(b, t, 16),
        "attention_mask": torch.ones(b, t, dtype=torch.long),
        "labels": torch.zeros(b, t, dtype=torch.long),
    }
    return Frame({**tensors, **changes})


class FrameSender(Device):
    """A device that sends one given frame, and keeps the error its session raised."""

    def __init__(self, teacher, student, frame: Frame) -> None:
        super().__init__(teacher, student, "ok")
        self.frame = frame
        self.seen: str = ""

    def train(self, msg: Message) -> Message | None:
        plan = protocol.RoundPlan.from_record(msg.content[protocol.PLAN])
        try:
            with DeviceSession(plan.address, plan.token, timeout_s=5.0) as session:
                session.exchange(self.frame)
        except Exception as err:
            self.seen = str(err)
            raise
        return None


# batch-size and seq-len come from RunConfig's defaults (8 and 64) in the world fixture.
_REFUSED = [
    (_smashed(b=9), "has B=9, the round allows at most 8 (batch-size)"),
    (_smashed(t=65), "has T=65, the round allows at most 64 (seq-len)"),
    (_smashed(b=64, t=64), "exceed max_frame_bytes="),
    (
        _smashed(teacher_embeds=torch.zeros(2, 12, 32, dtype=torch.long)),
        "tensor 'teacher_embeds' has dtype torch.int64",
    ),
    (
        _smashed(student_hidden=torch.zeros(2, 12, 16, dtype=torch.float64)),
        "tensor 'student_hidden' has dtype torch.float64",
    ),
    (
        _smashed(attention_mask=torch.full((2, 12), 0.5)),
        "tensor 'attention_mask' has dtype torch.float32",
    ),
    (
        _smashed(labels=torch.zeros(2, 12, dtype=torch.int32)),
        "tensor 'labels' has dtype torch.int32",
    ),
    (
        _smashed(attention_mask=torch.full((2, 12), 2, dtype=torch.long)),
        "attention mask values must be 0 or 1, got [2]",
    ),
    (
        _smashed(labels=torch.full((2, 12), VOCAB, dtype=torch.long)),
        f"labels must be token ids in [0, {VOCAB}) or -100",
    ),
]


@pytest.mark.parametrize(("frame", "message"), _REFUSED)
def test_a_frame_outside_the_plan_is_refused_before_any_compute(
    world, frame: Frame, message: str
) -> None:
    # Prepare: a committed round first, so the optimizer holds state to protect.
    server, strategy, log, (teacher, student) = world
    splitkd = strategy()
    run_rounds(splitkd, FakeGrid({1: Device(teacher, student, "ok")}), 1, 10.0, log)
    before = snapshot(server)
    steps = []
    server.loss_fn = lambda *args: steps.append(args)  # must never run
    sender = FrameSender(teacher, student, frame)

    # Execute
    grid = FakeGrid({2: sender})
    run_rounds(splitkd, grid, 1, timeout_s=5.0, metrics_log=log)
    for thread in grid._threads.values():
        thread.join(5.0)

    # Assert: its own message in the metrics and on the device; nothing computed or kept.
    failed = log.records[1]
    assert failed["status"] == "rolled-back" and message in failed["error"]
    assert message in sender.seen
    assert steps == []
    assert_unchanged(server, before)

"""Split rounds over the real data plane: commit on success, exact rollback on every failure."""

from __future__ import annotations

import copy
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from splitkd_flwr.core.errors import ModelError, TransportError
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.partition import DevicePart, device_param_names
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split_kd.dataplane import DataPlane, run_device_round
from splitkd_flwr.transport import wire
from splitkd_flwr.transport.codec import encode_frame
from splitkd_flwr.transport.stream import (
    DataPlaneServer,
    DeviceSession,
    Frame,
    new_token,
)
from tests.apps.tiny import tiny_llama
from tests.split_kd.snapshots import assert_unchanged, snapshot

VOCAB, CUT = 64, 2


def _batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(4, VOCAB, (4, 12), generator=generator)
        mask = torch.ones_like(ids)
        mask[1, 8:] = 0  # padding present
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    teacher, student = tiny_llama(VOCAB, 32, 2), tiny_llama(VOCAB, 16, 4)
    server = SplitServer(teacher, student, KDLoss(alpha=0.5, temperature=2.0), lr=1e-2)
    stream = DataPlaneServer("127.0.0.1", 0, idle_timeout_s=2.0)
    plane = DataPlane(stream, stream.start())
    yield server, plane
    stream.stop()


def _device_round(
    server: SplitServer, plane: DataPlane, token: str, wire_dtype: str = "fp32"
) -> dict[str, torch.Tensor]:
    """A device with its own copy of the student and only the teacher's embedding table."""
    student = copy.deepcopy(server.student)
    part = DevicePart.from_parts(
        server.teacher.get_input_embeddings().weight.detach(), student, CUT
    )
    optimizer = torch.optim.AdamW(part.student_parameters(), lr=1e-2)
    with DeviceSession(
        plane.address, token, timeout_s=5.0, wire_dtype=wire_dtype
    ) as session:
        run_device_round(session, part, _batches(), optimizer)
    return {n: student.state_dict()[n] for n in device_param_names(student, CUT)}


def _warm_up(server: SplitServer, plane: DataPlane) -> None:
    """One good round first, so the optimizer has state that a failed round could corrupt."""
    token = new_token()
    round_ = plane.open_round(token, server, CUT)
    weights = _device_round(server, plane, token)
    round_.finish()
    server.commit(weights)


def test_good_round_commits_the_devices_weights(setup) -> None:
    # Prepare
    server, plane = setup
    before = snapshot(server)
    token = new_token()

    # Execute
    round_ = plane.open_round(token, server, CUT)
    weights = _device_round(server, plane, token)
    figures = round_.finish()
    server.commit(weights)

    # Assert
    assert figures["batches"] == 3 and figures["measured-bytes-up"] > 0
    state = server.student.state_dict()
    assert torch.equal(
        state["model.embed_tokens.weight"], weights["model.embed_tokens.weight"]
    )
    assert not torch.equal(
        state["model.embed_tokens.weight"], before[0]["model.embed_tokens.weight"]
    )
    assert not torch.equal(
        state["lm_head.weight"], before[0]["lm_head.weight"]
    )  # server side


def test_wrong_token_is_refused_and_nothing_changes(setup) -> None:
    server, plane = setup
    _warm_up(server, plane)
    before = snapshot(server)
    round_ = plane.open_round(new_token(), server, CUT)
    with pytest.raises(TransportError, match="token"):
        DeviceSession(plane.address, new_token(), timeout_s=5.0)
    round_.close()
    server.rollback()
    assert_unchanged(server, before)


def test_malformed_frame_ends_the_round_and_rolls_back(setup) -> None:
    server, plane = setup
    _warm_up(server, plane)
    before = snapshot(server)
    token = new_token()
    round_ = plane.open_round(token, server, CUT)
    good = {
        "input_ids": torch.zeros(2, 5, dtype=torch.long),
        "attention_mask": torch.ones(2, 5),
    }
    bad = Frame(
        {
            "teacher_embeds": torch.zeros(2, 5, 32),
            "student_hidden": torch.zeros(2, 5, 7),  # d_s is 16
            "attention_mask": good["attention_mask"],
            "labels": good["input_ids"],
        }
    )
    with pytest.raises(TransportError):
        with DeviceSession(plane.address, token, timeout_s=5.0) as session:
            session.exchange(bad)
    with pytest.raises(TransportError):
        round_.finish()
    server.rollback()
    assert_unchanged(server, before)


def test_nan_in_the_server_step_rolls_back(setup) -> None:
    server, plane = setup
    _warm_up(server, plane)
    before = snapshot(server)
    server.loss_fn = lambda s, t, labels: (
        s.float().sum() * float("nan")
    )  # a loss gone bad
    token = new_token()
    round_ = plane.open_round(token, server, CUT)
    with pytest.raises(TransportError, match="Non-finite"):
        _device_round(server, plane, token)
    with pytest.raises(TransportError):
        round_.finish()
    server.rollback()
    assert_unchanged(server, before)


def test_bad_device_weights_are_refused_before_loading(setup) -> None:
    server, plane = setup
    token = new_token()
    round_ = plane.open_round(token, server, CUT)
    weights = _device_round(server, plane, token)
    round_.finish()
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] * float(
        "nan"
    )
    with pytest.raises(ModelError, match="NaN"):
        server.commit(weights)
    with pytest.raises(ModelError, match="missing"):
        server.commit({})


def test_device_killed_mid_round_rolls_back_and_the_next_round_succeeds(setup) -> None:
    # Prepare
    server, plane = setup
    _warm_up(server, plane)
    before = snapshot(server)
    token = new_token()
    round_ = plane.open_round(token, server, CUT)
    device = textwrap.dedent(f"""
        import os, signal, torch
        from splitkd_flwr.transport.stream import DeviceSession, Frame
        session = DeviceSession({plane.address!r}, {token!r}, timeout_s=10.0)
        for _ in range(2):
            session.exchange(Frame({{
                "teacher_embeds": torch.randn(2, 6, 32), "student_hidden": torch.randn(2, 6, 16),
                "attention_mask": torch.ones(2, 6, dtype=torch.long),
                "labels": torch.randint(0, {VOCAB}, (2, 6)),
            }}))
        os.kill(os.getpid(), signal.SIGKILL)
    """)

    # Execute: the device trains two batches (the server steps twice), then dies.
    killed = subprocess.run([sys.executable, "-c", device], timeout=120)
    with pytest.raises(TransportError):
        round_.finish(timeout_s=10.0)
    server.rollback()

    # Assert
    assert killed.returncode == -9
    assert_unchanged(server, before)
    token = new_token()
    round_ = plane.open_round(token, server, CUT)
    weights = _device_round(server, plane, token)
    assert round_.finish()["batches"] == 3
    server.commit(weights)


@pytest.mark.parametrize("wire_dtype", ["bf16", "int8"])
def test_a_round_trains_over_a_compressed_wire(setup, wire_dtype: str) -> None:
    # Prepare: the same data plane, its down frames (gradients) compressed too.
    server, plane = setup
    plane.wire_dtype = wire_dtype
    before = snapshot(server)
    token = new_token()

    # Execute
    round_ = plane.open_round(token, server, CUT)
    weights = _device_round(server, plane, token, wire_dtype)
    figures = round_.finish()
    server.commit(weights)

    # Assert: fewer bytes than fp32 would take, finite training, weights moved.
    fp32_up = (
        3 * 4 * 12 * (32 + 16) * 4
    )  # 3 batches x (4 x 12) tokens x (d_t + d_s) floats
    assert figures["measured-bytes-up"] < fp32_up
    assert figures["train-loss"] == figures["train-loss"]  # not NaN
    state = server.student.state_dict()
    assert not torch.equal(state["lm_head.weight"], before[0]["lm_head.weight"])


def _good_frame() -> Frame:
    return Frame(
        {
            "teacher_embeds": torch.randn(2, 6, 32),
            "student_hidden": torch.randn(2, 6, 16),
            "attention_mask": torch.ones(2, 6, dtype=torch.long),
            "labels": torch.randint(0, VOCAB, (2, 6)),
        }
    )


def _part_of_a_frame(session: DeviceSession, frame: Frame) -> None:
    """Send a frame's header and half its bytes, as a send interrupted midway leaves it."""
    data = b"".join(encode_frame(frame))
    head = wire.HEAD.pack(wire.DATA, len(data))
    session._sock.sendall(head + data[: len(data) // 2])
    session._chan.tx_clean = False  # what the session knows after such a send


# With length-prefixed messages a CLOSE or an abort's reason cannot arrive inside a
# frame: a device that sent part of a frame can only end or reset its connection, or
# fall silent; each is named, with the partial frame.
@pytest.mark.parametrize(
    ("ending", "words"),
    [
        (
            "close",
            "device disconnected before closing the round (while receiving frame 2)",
        ),
        (
            "abort",
            "device disconnected before closing the round (while receiving frame 2)",
        ),
        (
            "reset",
            "device reset the connection before closing the round "
            "(while receiving frame 2)",
        ),
        (
            "silent",
            "device silent for more than idle_timeout_s=2.0 (while receiving frame 2)",
        ),
    ],
)
def test_a_frame_cut_short_is_never_dropped_silently(
    setup, ending: str, words: str
) -> None:
    # Prepare: one frame answered, the second cut short.
    server, plane = setup
    _warm_up(server, plane)
    before = snapshot(server)
    token = new_token()
    round_ = plane.open_round(token, server, CUT)
    session = DeviceSession(plane.address, token, timeout_s=5.0)
    session.exchange(_good_frame())
    _part_of_a_frame(session, _good_frame())

    # Execute
    if ending == "close":
        with pytest.raises(TransportError) as on_device:
            session.close()
        assert words in str(on_device.value)  # the device hears why, too
    elif ending == "abort":
        session.abort("gave up")  # its reason cannot follow a partial frame
    elif ending == "reset":
        session._sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        session._sock.close()  # closing with linger 0 resets the connection
    with pytest.raises(TransportError) as on_server:
        round_.finish()
    session.abort("test over")
    server.rollback()

    # Assert: its own message, naming the partial frame; an exact rollback.
    message = str(on_server.value)
    assert words in message and "bytes of a frame were dropped" in message
    assert_unchanged(server, before)


def test_device_vanishing_while_the_server_computes_is_named(setup) -> None:
    # Prepare: the server step blocks until the device has vanished.
    server, plane = setup
    _warm_up(server, plane)
    before = snapshot(server)
    entered, gone = threading.Event(), threading.Event()
    loss_fn = server.loss_fn

    def slow_loss(*args):
        entered.set()
        gone.wait(5.0)
        return loss_fn(*args)

    server.loss_fn = slow_loss
    token = new_token()
    round_ = plane.open_round(token, server, CUT)
    session = DeviceSession(plane.address, token, timeout_s=5.0)
    seen: list[BaseException] = []

    def exchange() -> None:
        try:
            session.exchange(_good_frame())
        except TransportError as err:
            seen.append(err)

    device = threading.Thread(target=exchange)
    device.start()

    # Execute: the device vanishes while on_frame runs.
    assert entered.wait(5.0)
    session._sock.shutdown(socket.SHUT_RDWR)  # the device's connection ends
    time.sleep(0.2)  # the end reaches the server
    gone.set()
    device.join(5.0)
    session.abort("gone")
    with pytest.raises(TransportError) as on_server:
        round_.finish()
    server.loss_fn = loss_fn
    server.rollback()

    # Assert: its own message (not "the stream handler stopped"), exact rollback.
    message = str(on_server.value)
    assert (
        "device disconnected before closing the round "
        "(while computing the answer to frame 1)" in message
    )
    assert seen and "data-plane round failed" in str(seen[0])
    assert_unchanged(server, before)

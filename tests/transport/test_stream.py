"""Tests of the data plane over real loopback sockets: rounds, tokens, failures, TLS."""

import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.transport.stream import (
    DataPlaneServer,
    DeviceSession,
    DeviceTLS,
    Frame,
    TensorSpec,
    new_token,
    self_signed,
)

UP_SPEC = {
    "hidden": TensorSpec(torch.float32, ("B", "T", 8)),
    "labels": TensorSpec(torch.int64, ("B", "T")),
}


def _double(frame: Frame) -> Frame:
    return Frame({"grad": frame["hidden"] * 2}, {"loss": float(frame["hidden"].sum())})


def _up(b: int = 2, t: int = 4) -> Frame:
    return Frame(
        {"hidden": torch.randn(b, t, 8), "labels": torch.randint(0, 9, (b, t))}
    )


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while (
        leaked := set(threading.enumerate()) - before
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


@pytest.fixture
def server() -> Iterator[DataPlaneServer]:
    srv = DataPlaneServer(idle_timeout_s=5.0)
    srv.address = srv.start()
    yield srv
    srv.stop()


def test_round_trip_frames_meta_and_byte_counts(server: DataPlaneServer) -> None:
    # Prepare
    token = new_token()
    handle = server.open_round(token, _double, spec=UP_SPEC, wire_dtype="bf16")
    frames = [_up(), _up(3, 5), _up(1, 1)]

    # Execute
    with DeviceSession(server.address, token, timeout_s=5, wire_dtype="fp16") as dev:
        answers = [dev.exchange(f) for f in frames]
    stats = handle.wait(5)

    # Assert
    assert handle.error is None
    for sent, got in zip(frames, answers, strict=True):
        assert got["grad"].dtype == torch.float32  # bf16 on the wire, restored
        torch.testing.assert_close(
            got["grad"], sent["hidden"] * 2, rtol=2e-2, atol=2e-2
        )
        assert got.meta["loss"] == pytest.approx(
            float(sent["hidden"].half().float().sum()), rel=1e-5
        )
    assert stats.frames == dev.frames == 3
    assert stats.bytes_up == dev.bytes_up > 0
    assert stats.bytes_down == dev.bytes_down > 0
    assert stats.wall_s > 0 and stats.callback_s > 0 and stats.peer


def test_a_multi_megabyte_frame_arrives_exactly(server: DataPlaneServer) -> None:
    token = new_token()
    handle = server.open_round(token, lambda f: Frame({"grad": f["x"].flip(0)}))
    x = torch.randn(3 * 1024 * 1024 // 4 + 77)  # 3 MiB and a bit: many recv calls
    with DeviceSession(server.address, token, timeout_s=10) as dev:
        got = dev.exchange(Frame({"x": x}))["grad"]
    handle.wait(5)
    assert handle.error is None
    assert torch.equal(got, x.flip(0))


def test_wrong_and_reused_tokens_are_refused_on_both_sides(
    server: DataPlaneServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    token = new_token()
    handle = server.open_round(token, _double)

    # Execute / Assert: a wrong token does not disturb the open round
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(TransportError, match="unknown round token"),
    ):
        DeviceSession(server.address, new_token(), timeout_s=5)
    assert "unknown round token" in caplog.text
    with DeviceSession(server.address, token, timeout_s=5) as dev:
        dev.exchange(_up())
    handle.wait(5)
    assert handle.error is None
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(TransportError, match="already used"),
    ):
        DeviceSession(server.address, token, timeout_s=5)
    assert "already used" in caplog.text
    with pytest.raises(TransportError, match="already in use"):
        server.open_round(token, _double)


def test_callback_error_reaches_the_device(server: DataPlaneServer) -> None:
    def boom(frame: Frame) -> Frame:
        raise ValueError("loss exploded at batch 0")

    token = new_token()
    handle = server.open_round(token, boom)
    with pytest.raises(TransportError, match="loss exploded at batch 0"):
        with DeviceSession(server.address, token, timeout_s=5) as dev:
            dev.exchange(_up())
    handle.wait(5)
    assert isinstance(handle.error, ValueError)


@pytest.mark.parametrize(
    ("on_frame", "up", "message"),
    [
        (
            _double,
            Frame(
                {
                    "hidden": torch.randn(2, 4, 9),
                    "labels": torch.zeros(2, 4, dtype=torch.long),
                }
            ),
            "'hidden' has shape",
        ),
        (
            _double,
            Frame({"hidden": torch.randn(2, 4, 8)}),
            "expected \\['hidden', 'labels'\\]",
        ),
        (
            lambda f: Frame({"grad": torch.full((2,), float("nan"))}),
            _up(),
            "'grad' contains NaN",
        ),
        (
            _double,
            Frame(
                {
                    "hidden": torch.randn(64, 64, 8),
                    "labels": torch.zeros(64, 64, dtype=torch.long),
                }
            ),
            "exceed max_frame_bytes",
        ),
    ],
    ids=["shape", "missing-tensor", "nan-grad", "oversized"],
)
def test_bad_frames_end_the_round_on_both_sides(
    on_frame, up: Frame, message: str
) -> None:
    with DataPlaneServer(max_frame_bytes=64 * 1024) as server:
        token = new_token()
        handle = server.open_round(token, on_frame, spec=UP_SPEC)
        with pytest.raises(TransportError, match=message):
            with DeviceSession(f"127.0.0.1:{server.port}", token, timeout_s=5) as dev:
                dev.exchange(up)
        handle.wait(5)
    assert isinstance(handle.error, TransportError)
    assert re.search(message, str(handle.error))


def test_device_error_aborts_the_round_with_its_reason(server: DataPlaneServer) -> None:
    token = new_token()
    handle = server.open_round(token, _double)
    with pytest.raises(RuntimeError):
        with DeviceSession(server.address, token, timeout_s=5) as dev:
            dev.exchange(_up())
            raise RuntimeError("device out of memory")
    handle.wait(5)
    assert "device out of memory" in str(handle.error)


def test_silent_device_ends_the_round_within_the_idle_timeout() -> None:
    with DataPlaneServer(idle_timeout_s=0.5) as server:
        token = new_token()
        handle = server.open_round(token, _double)
        dev = DeviceSession(f"127.0.0.1:{server.port}", token, timeout_s=5)
        dev.exchange(_up())
        start = time.monotonic()
        handle.wait(5)
        elapsed_s = time.monotonic() - start
        with pytest.raises(TransportError) as on_device:
            dev.exchange(_up())
        dev.abort("test over")
    # The same message on both sides.
    words = "device silent for more than idle_timeout_s=0.5"
    assert words in str(handle.error) and words in str(on_device.value)
    assert (
        0.4 < elapsed_s < 3.0
    )  # idle timeout + watchdog tick, with slack for a loaded CI


_KILLED_DEVICE = textwrap.dedent(
    """
    import sys, time, torch
    from splitkd_flwr.transport.stream import DeviceSession, Frame
    dev = DeviceSession(sys.argv[1], sys.argv[2], timeout_s=30)
    dev.exchange(Frame({"hidden": torch.ones(1, 2, 8), "labels": torch.ones(1, 2, dtype=torch.long)}))
    print("sent", flush=True)
    time.sleep(60)
    """
)


def test_device_killed_mid_round_ends_the_round(server: DataPlaneServer) -> None:
    # Prepare: a real device process, killed after its first frame
    token = new_token()
    handle = server.open_round(token, _double)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_DEVICE, server.address, token],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "sent"

        # Execute
        start = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        handle.wait(10)
        elapsed_s = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()

    # Assert: found by the broken connection, not by the 5 s idle timeout
    assert "disconnected before closing the round" in str(handle.error)
    assert handle.stats.frames == 1
    assert elapsed_s < 3


def test_server_gone_or_hung_fails_the_device_within_its_timeout() -> None:
    server = DataPlaneServer()
    address = server.start()
    token = new_token()
    server.open_round(token, _double)
    dev = DeviceSession(address, token, timeout_s=2)
    server.stop()
    with pytest.raises(TransportError, match="data-plane server stopped"):
        dev.exchange(_up())
    dev.abort("server gone")

    released = threading.Event()
    with DataPlaneServer() as server:
        token = new_token()
        handle = server.open_round(token, lambda f: (released.wait(5), _double(f))[1])
        dev = DeviceSession(f"127.0.0.1:{server.port}", token, timeout_s=0.5)
        start = time.monotonic()
        with pytest.raises(TransportError, match="no answer .* within timeout_s=0.5"):
            dev.exchange(_up())
        assert time.monotonic() - start < 1.5
        dev.abort("no answer")
        released.set()
        handle.wait(5)
    assert handle.error is not None

    with pytest.raises(TransportError, match=f"cannot reach .*{address}"):
        DeviceSession(address, token, timeout_s=0.3)


def test_server_side_wait_timeout_and_close_end_the_round(
    server: DataPlaneServer,
) -> None:
    token = new_token()
    handle = server.open_round(token, _double)
    handle.wait(0.1)  # no device came
    assert "did not finish within 0.1 s" in str(handle.error)
    with pytest.raises(TransportError, match="already used"):
        DeviceSession(server.address, token, timeout_s=5)

    token = new_token()
    handle = server.open_round(token, _double)
    dev = DeviceSession(server.address, token, timeout_s=5)
    dev.exchange(_up())
    handle.close()
    with pytest.raises(TransportError, match="closed by the server before the device"):
        dev.exchange(_up())
    dev.abort("closed")
    assert "closed by the server" in str(handle.error)


def test_tls_round_trip_and_untrusted_certificate() -> None:
    server_tls, device_tls = self_signed("127.0.0.1")
    _, other_device_tls = self_signed("127.0.0.1")
    with DataPlaneServer(tls=server_tls) as server:
        address = f"127.0.0.1:{server.port}"
        token = new_token()
        handle = server.open_round(token, _double)
        with pytest.raises(TransportError, match="cannot reach"):
            DeviceSession(address, token, timeout_s=0.5, tls=other_device_tls)
        with DeviceSession(address, token, timeout_s=5, tls=device_tls) as dev:
            frame = _up()
            got = dev.exchange(frame)
        handle.wait(5)
    assert handle.error is None
    assert torch.equal(got["grad"], frame["hidden"] * 2)


def test_tls_checks_the_servers_name_or_the_devices_override() -> None:
    # Prepare: a certificate for a DNS name, dialled by IP address.
    server_tls, device_tls = self_signed("edge.example")
    with DataPlaneServer(tls=server_tls) as server:
        address = f"127.0.0.1:{server.port}"
        token = new_token()
        handle = server.open_round(token, _double)

        # Execute / Assert: the dialled host is checked unless server_name says otherwise.
        with pytest.raises(TransportError, match="not trusted .*mismatch"):
            DeviceSession(address, token, timeout_s=5, tls=device_tls)
        named = DeviceTLS(device_tls.root_certificates, server_name="edge.example")
        with DeviceSession(address, token, timeout_s=5, tls=named) as dev:
            dev.exchange(_up())
        handle.wait(5)
    assert handle.error is None
    # TLS 1.2 at least, on both ends.
    assert server_tls.context().minimum_version == ssl.TLSVersion.TLSv1_2
    assert named.context().minimum_version == ssl.TLSVersion.TLSv1_2

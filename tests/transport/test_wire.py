"""The data plane's messages on real sockets: a peer that breaks the protocol, limits, threads."""

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.transport import wire
from splitkd_flwr.transport.stream import (
    DataPlaneServer,
    DeviceSession,
    Frame,
    new_token,
)


def _echo(frame: Frame) -> Frame:
    return Frame({"grad": frame["x"] * 2})


def _channel(sock: socket.socket, timeout_s: float = 5.0) -> wire.Channel:
    """A protocol-speaking end for tests, giving up after ``timeout_s`` per call."""
    deadline = time.monotonic() + timeout_s

    def on_wait() -> None:
        if time.monotonic() > deadline:
            raise TimeoutError("test peer timed out")

    sock.settimeout(0.05)
    return wire.Channel(sock, on_wait)


def _raw_device(server: DataPlaneServer, token: str) -> wire.Channel:
    """A device speaking the protocol by hand, its token accepted."""
    chan = _channel(socket.create_connection(("127.0.0.1", server.port)))
    chan.send(wire.TOKEN, [token.encode()])
    assert chan.recv_head() == (wire.ACCEPT, 0)
    return chan


def _server_says(chan: wire.Channel) -> str:
    tag, length = chan.recv_head()
    assert tag == wire.ERROR
    return chan.recv_text(length)


@pytest.fixture
def server() -> Iterator[DataPlaneServer]:
    srv = DataPlaneServer(idle_timeout_s=5.0, max_frame_bytes=1 << 20)
    srv.start()
    yield srv
    srv.stop()


def test_a_frame_length_over_the_limit_is_refused_before_anything_is_allocated(
    server: DataPlaneServer,
) -> None:
    # Prepare
    token = new_token()
    handle = server.open_round(token, _echo, max_frame_bytes=4096)
    chan = _raw_device(server, token)

    # Execute: announce 4 EiB; allocating it would fail with MemoryError instead.
    chan.sock.sendall(wire.HEAD.pack(wire.DATA, 1 << 62))
    told = _server_says(chan)
    handle.wait(5)
    chan.sock.close()

    # Assert: the round's own limit, named on both sides.
    words = f"{1 << 62} bytes exceed max_frame_bytes=4096"
    assert words in told and words in str(handle.error)


def test_an_unknown_message_or_handshake_is_refused(server: DataPlaneServer) -> None:
    token = new_token()
    handle = server.open_round(token, _echo)
    chan = _raw_device(server, token)
    chan.send(b"Z", [b"hello"])
    assert "unknown tag b'Z'" in _server_says(chan)
    handle.wait(5)
    assert "unknown tag b'Z'" in str(handle.error)
    chan.sock.close()

    chan = _channel(socket.create_connection(("127.0.0.1", server.port)))
    chan.send(wire.DATA, [b"no token first"])
    tag, length = chan.recv_head()
    assert tag == wire.REFUSE and "expected a token" in chan.recv_text(length)
    chan.sock.close()


def test_the_device_names_an_answer_cut_short_by_the_server() -> None:
    # Prepare: a server that sends 400 of the 1000 bytes it announced, then closes.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def cut_short() -> None:
        sock, _ = listener.accept()
        chan = _channel(sock)
        tag, length = chan.recv_head()
        chan.recv_text(length)
        chan.send(wire.ACCEPT)
        tag, length = chan.recv_head()
        chan.recv_frame(length, 1 << 20)
        sock.sendall(wire.HEAD.pack(wire.DATA, 1000) + bytes(400))
        sock.close()

    peer = threading.Thread(target=cut_short)
    peer.start()

    # Execute
    dev = DeviceSession(f"127.0.0.1:{port}", new_token(), timeout_s=5)
    with pytest.raises(TransportError) as on_device:
        dev.exchange(Frame({"x": torch.ones(4)}))
    dev.abort("test over")
    peer.join()
    listener.close()

    # Assert: the partial frame is named, and every later call says the same.
    assert str(on_device.value) == (
        "data-plane round failed: the server closed the connection (while receiving "
        "the answer to frame 1); 400 of 1000 bytes of a frame were dropped"
    )


def test_a_device_beyond_max_workers_is_refused_with_a_message() -> None:
    with DataPlaneServer(max_workers=1) as server:
        address = f"127.0.0.1:{server.port}"
        first, second = new_token(), new_token()
        handle = server.open_round(first, _echo)
        server.open_round(second, _echo)
        with DeviceSession(address, first, timeout_s=5) as dev:
            with pytest.raises(TransportError, match="server busy.*max_workers=1"):
                DeviceSession(address, second, timeout_s=5)
            dev.exchange(Frame({"x": torch.ones(2)}))  # the first round goes on
        handle.wait(5)
    assert handle.error is None


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_stop_leaves_no_thread_and_no_file_descriptor() -> None:
    # Prepare: one device between frames, one inside on_frame, one refused.
    threads, fds = threading.active_count(), _open_fds()
    entered, release = threading.Event(), threading.Event()

    def slow(frame: Frame) -> Frame:
        entered.set()
        release.wait(5)
        return _echo(frame)

    server = DataPlaneServer(idle_timeout_s=30)
    address = server.start()
    idle_token, busy_token = new_token(), new_token()
    idle_round = server.open_round(idle_token, _echo)
    busy_round = server.open_round(busy_token, slow)
    idle_dev = DeviceSession(address, idle_token, timeout_s=5)
    idle_dev.exchange(Frame({"x": torch.ones(3)}))
    busy_dev = DeviceSession(address, busy_token, timeout_s=5)
    seen: list[Exception] = []

    def exchange() -> None:
        try:
            busy_dev.exchange(Frame({"x": torch.ones(3)}))
        except TransportError as err:
            seen.append(err)

    busy = threading.Thread(target=exchange)
    busy.start()
    assert entered.wait(5)
    with pytest.raises(TransportError, match="unknown round token"):
        DeviceSession(address, new_token(), timeout_s=5)

    # Execute
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.3)
    release.set()  # stop() waits for on_frame, as rollback safety needs
    stopper.join(10)
    busy.join(5)
    with pytest.raises(TransportError, match="data-plane server stopped"):
        idle_dev.exchange(Frame({"x": torch.ones(3)}))
    idle_dev.abort("over")
    busy_dev.abort("over")

    # Assert
    assert not stopper.is_alive()
    assert "data-plane server stopped" in str(idle_round.error)
    assert "data-plane server stopped" in str(busy_round.error)
    assert seen and "data-plane server stopped" in str(seen[0])
    assert threading.active_count() == threads
    assert _open_fds() == fds

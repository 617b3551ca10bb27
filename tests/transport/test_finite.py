"""NaN/inf at either end of a multi-MiB tensor is refused by whichever side meets it.

Over real loopback sockets, plain and TLS, fp32 and bf16 wires: the sender refuses
before a byte of the frame goes, the receiver refuses before ``on_frame`` or the
caller sees the frame, and both ends name the tensor.
"""

import functools
from collections.abc import Iterator

import pytest
import torch

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.transport import codec, connection, device
from splitkd_flwr.transport.stream import (
    DataPlaneServer,
    DeviceSession,
    Frame,
    new_token,
    self_signed,
)

REFUSED = "tensor '{}' contains NaN or inf"


def _large(where: str | None) -> torch.Tensor:
    # 4 MiB + one row of fp32: many socket reads, and a ragged last piece.
    x = torch.randn(1025, 1024)
    if where == "first":
        x.view(-1)[0] = float("nan")
    elif where == "last":
        x.view(-1)[-1] = float("inf")
    return x


@pytest.fixture(scope="module", params=["plain", "tls"])
def plane(request) -> Iterator[tuple[DataPlaneServer, object]]:
    server_tls, device_tls = (
        self_signed("127.0.0.1") if request.param == "tls" else (None, None)
    )
    with DataPlaneServer(tls=server_tls, idle_timeout_s=10.0) as server:
        yield server, device_tls


def _round(plane, wire: str, on_frame):
    server, device_tls = plane
    token = new_token()
    handle = server.open_round(token, on_frame, wire_dtype=wire)
    session = functools.partial(
        DeviceSession,
        f"127.0.0.1:{server.port}",
        token,
        timeout_s=10,
        wire_dtype=wire,
        tls=device_tls,
    )
    return handle, session


# Who meets the bad tensor: the side that would send it (its own check), or the side
# that receives it (the sender's check switched off, as a faulty or hostile peer).
# Columns: the module whose checks are off, which way the bad tensor goes, what the
# device raises, what the server's round records.
SIDES = {
    "device-sends": (
        None,
        "up",
        REFUSED.format("hidden"),
        f"device aborted the round: TransportError: {REFUSED.format('hidden')}",
    ),
    "server-receives": (
        device,
        "up",
        f"data-plane round failed: {REFUSED.format('hidden')}",
        REFUSED.format("hidden"),
    ),
    "server-sends": (
        None,
        "down",
        f"data-plane round failed: {REFUSED.format('grad')}",
        REFUSED.format("grad"),
    ),
    "device-receives": (
        connection,
        "down",
        REFUSED.format("grad"),
        f"device aborted the round: TransportError: {REFUSED.format('grad')}",
    ),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("wire", ["fp32", "bf16"])
@pytest.mark.parametrize("where", ["first", "last"])
def test_a_bad_tensor_is_refused_naming_it(
    plane, side: str, wire: str, where: str, monkeypatch
) -> None:
    # Prepare
    unchecked, way, on_device, on_server = SIDES[side]
    if unchecked is not None:
        quiet = functools.partial(codec.encode_frame, check_finite=False)
        monkeypatch.setattr(unchecked, "encode_frame", quiet)
    bad_up, bad_down = (where, None) if way == "up" else (None, where)
    calls = []

    def on_frame(frame: Frame) -> Frame:
        calls.append(frame)
        return Frame({"grad": _large(bad_down)})

    handle, session = _round(plane, wire, on_frame)

    # Execute
    with pytest.raises(TransportError) as raised:
        with session() as dev:
            dev.exchange(Frame({"hidden": _large(bad_up)}))
    handle.wait(10)

    # Assert: both ends name the tensor; a bad up frame never reached on_frame, and
    # a refusing sender sent none of it.
    assert (str(raised.value), str(handle.error)) == (on_device, on_server)
    if way == "up":
        assert calls == []
    if side == "device-sends":
        assert handle.stats.bytes_up == 0
    if side == "server-sends":
        assert handle.stats.bytes_down == 0

"""The data plane's public API: a server endpoint per run, a device session per round.

Server (the long-lived ServerApp process)::

    server = DataPlaneServer("127.0.0.1", 0, idle_timeout_s=60)
    address = server.start()                    # send to the device in the round plan
    token = new_token()                         # likewise
    handle = server.open_round(token, on_frame)  # on_frame(Frame) -> Frame
    ...                                          # the device runs its round
    stats = handle.wait(timeout_s)               # handle.error is None on success
    server.stop()

Device (inside the ClientApp's ``train`` handler)::

    with DeviceSession(address, token, timeout_s=60) as session:
        for batch in batches:
            grad = session.exchange(Frame({...}))["grad"]

Leaving the ``with`` block normally closes the round cleanly; leaving it with an
exception aborts the round, and the server's ``handle.error`` names that exception.
"""

from __future__ import annotations

import secrets

from splitkd_flwr.transport.codec import DEFAULT_MAX_FRAME_BYTES, WIRE_DTYPES
from splitkd_flwr.transport.device import DeviceSession
from splitkd_flwr.transport.frame import Frame, TensorSpec
from splitkd_flwr.transport.rounds import OnFrame, RoundHandle, RoundStats
from splitkd_flwr.transport.server import DataPlaneServer
from splitkd_flwr.transport.tls import DeviceTLS, ServerTLS, self_signed

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "WIRE_DTYPES",
    "DataPlaneServer",
    "DeviceSession",
    "DeviceTLS",
    "Frame",
    "OnFrame",
    "RoundHandle",
    "RoundStats",
    "ServerTLS",
    "TensorSpec",
    "new_token",
    "self_signed",
]


def new_token() -> str:
    """A fresh one-time round token (32 URL-safe characters, 192 random bits)."""
    return secrets.token_urlsafe(24)

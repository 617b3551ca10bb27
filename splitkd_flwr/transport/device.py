"""The device's end of a round: connect with the token, exchange frames, close.

No thread of its own: each call sends, then receives with a deadline, on the caller's
thread.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TypeVar

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.transport import wire
from splitkd_flwr.transport.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    WIRE_DTYPES,
    decode_frame,
    encode_frame,
    encoded_nbytes,
)
from splitkd_flwr.transport.frame import Frame, TensorSpec
from splitkd_flwr.transport.tls import DeviceTLS

__all__ = ["DeviceSession"]

_T = TypeVar("_T")
_ABORT_WAIT_S = 1.0  # longest wait for the server to read an abort's reason


class _Deadline(Exception):
    """The current call's ``timeout_s`` ran out."""


class DeviceSession:
    """One round seen from the device; connects on construction.

    Parameters
    ----------
    address : str
        ``host:port`` of the server's data plane (from the round plan).
    token : str
        The round's one-time token (from the round plan).
    timeout_s : float
        Longest wait for the connection, for each answer and for the close.
    tls : DeviceTLS | None
        Root certificate to trust; ``None`` connects without encryption (loopback only).
    wire_dtype : str
        Wire dtype of the up frames (``WIRE_DTYPES``).
    max_frame_bytes : int
        Larger down frames end the round with an error.
    spec : Mapping[str, TensorSpec] | None
        Expected down frames; a mismatch raises ``TransportError``.

    Raises
    ------
    TransportError
        Server unreachable within ``timeout_s``, or the token refused.
    """

    def __init__(
        self,
        address: str,
        token: str,
        *,
        timeout_s: float = 60.0,
        tls: DeviceTLS | None = None,
        wire_dtype: str = "fp32",
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        spec: Mapping[str, TensorSpec] | None = None,
    ) -> None:
        if wire_dtype not in WIRE_DTYPES:
            raise TransportError(
                f"wire_dtype={wire_dtype!r} is not one of {WIRE_DTYPES}"
            )
        self.address, self.timeout_s = address, timeout_s
        self.wire_dtype, self.max_frame_bytes, self.spec = (
            wire_dtype,
            max_frame_bytes,
            spec,
        )
        self.frames = self.bytes_up = self.bytes_down = 0
        self.exchange_s = 0.0  # wall time inside exchange(), codec included
        self._closed = False
        self._error: TransportError | None = None  # once set, every call raises it
        self._doing = "presenting the round token"
        self._deadline = time.monotonic() + timeout_s
        self._sock = _connect(address, tls, timeout_s)
        self._chan = wire.Channel(self._sock, self._on_wait)
        try:
            self._io(self._handshake, token)
        except TransportError:
            self._shutdown()
            raise

    def _handshake(self, token: str) -> None:
        self._chan.send(wire.TOKEN, [wire.encode_text(token)])
        tag, length = self._chan.recv_head()
        if tag == wire.REFUSE:
            raise TransportError(
                f"data-plane round refused: {self._chan.recv_text(length)}"
            )
        if tag != wire.ACCEPT or length:
            raise TransportError("malformed answer to the round token")

    def exchange(self, frame: Frame) -> Frame:
        """Send ``frame`` up and return the server's answer.

        Raises
        ------
        TransportError
            No answer within ``timeout_s``, the round ended by the server (its message
            included), or a malformed, oversized, non-finite or unexpected answer.
        """
        self._check_open()
        start = time.perf_counter()
        parts = encode_frame(frame, self.wire_dtype)
        n = self.frames + 1
        self._doing = f"sending frame {n}"
        buf = self._io(self._send_and_receive, parts, n)
        answer = decode_frame(buf, max_frame_bytes=self.max_frame_bytes, spec=self.spec)
        self.frames = n
        self.bytes_up += encoded_nbytes(parts)
        self.bytes_down += len(buf)
        self.exchange_s += time.perf_counter() - start
        return answer

    def _send_and_receive(self, parts: list[memoryview], n: int) -> memoryview:
        self._chan.send(wire.DATA, parts)
        self._doing = f"waiting for the answer to frame {n}"
        tag, length = self._chan.recv_head()
        if tag == wire.ERROR:
            reason = self._chan.recv_text(length)
            raise TransportError(f"data-plane round failed: {reason}")
        if tag != wire.DATA:
            raise TransportError(f"malformed answer: tag {tag!r}, expected a frame")
        self._doing = f"receiving the answer to frame {n}"
        return self._chan.recv_frame(length, self.max_frame_bytes)

    def close(self) -> None:
        """End the round cleanly; the server's round completes without error."""
        if self._closed:
            return
        try:
            self._check_open()
            self._doing = "closing the round"
            self._io(self._close)
        finally:
            self._shutdown()

    def _close(self) -> None:
        if self._chan.tx_clean:
            self._chan.send(wire.CLOSE)
        else:
            # A frame was cut short (a send interrupted): no CLOSE can follow it. End
            # the stream; the server's answer names the partial frame.
            self._sock.shutdown(socket.SHUT_WR)
        tag, length = self._chan.recv_head()
        if tag == wire.ERROR:
            reason = self._chan.recv_text(length)
            raise TransportError(f"data-plane round failed: {reason}")
        if tag != wire.CLOSED:
            raise TransportError("the server answered the close with data")

    def abort(self, reason: str) -> None:
        """End the round with an error the server records as ``reason``; never raises.

        After a frame cut short (a send interrupted) the reason cannot follow on the
        stream: the connection just ends, and the server names the partial frame.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._chan.goodbye(wire.ABORT, reason, min(self.timeout_s, _ABORT_WAIT_S))
        except Exception:  # never raises: the caller is already failing
            self._sock.close()

    def __enter__(self) -> DeviceSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(f"{type(exc).__name__}: {exc}")

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise TransportError("the data-plane session is closed")

    def _on_wait(self) -> None:
        remaining_s = self._deadline - time.monotonic()
        if remaining_s <= 0:
            raise _Deadline()
        self._sock.settimeout(remaining_s)

    def _io(self, step: Callable[..., _T], *args: object) -> _T:
        """Run ``step`` under a fresh ``timeout_s`` deadline; name how it failed."""
        self._deadline = time.monotonic() + self.timeout_s
        self._sock.settimeout(self.timeout_s)
        try:
            return step(*args)
        except _Deadline:
            err = TransportError(
                f"no answer from the data-plane server at {self.address} within "
                f"timeout_s={self.timeout_s} (while {self._doing})"
            )
        except wire.PeerGone as gone:
            err = self._lost(gone)
        except TransportError as transport_error:
            err = transport_error
        self._error = err
        raise err

    def _lost(self, gone: wire.PeerGone) -> TransportError:
        """The connection ended under the device: the server's reason if it sent one."""
        partial = self._chan.partial()
        if partial is None:
            reason = self._server_reason()
            if reason is not None:
                return TransportError(f"data-plane round failed: {reason}")
        what = "reset the connection" if gone.reset else "closed the connection"
        message = f"data-plane round failed: the server {what} (while {self._doing})"
        if partial is not None:
            message += f"; {partial} were dropped"
        return TransportError(message)

    def _server_reason(self) -> str | None:
        """Read the reason a server sends before it closes, if it is there."""
        wait_s = min(self.timeout_s, _ABORT_WAIT_S)
        self._deadline = time.monotonic() + wait_s
        try:
            self._sock.settimeout(wait_s)
            tag, length = self._chan.recv_head()
            if tag in (wire.ERROR, wire.REFUSE):
                return self._chan.recv_text(length)
        except (_Deadline, wire.PeerGone, TransportError, OSError):
            pass
        return None

    def _shutdown(self) -> None:
        self._closed = True
        self._sock.close()


def _connect(address: str, tls: DeviceTLS | None, timeout_s: float) -> socket.socket:
    """A connected socket (TLS-wrapped and verified if ``tls``), retrying until ``timeout_s``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise TransportError(f"data-plane address {address!r} is not host:port")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    delay_s = 0.02
    while True:
        try:
            remaining_s = max(0.001, deadline - time.monotonic())
            sock = socket.create_connection((host, int(port)), timeout=remaining_s)
            break
        except OSError as err:
            # The server may come up a moment later: retry, as gRPC channels did.
            if time.monotonic() + delay_s > deadline:
                raise TransportError(
                    f"cannot reach the data-plane server at {address} within "
                    f"{timeout_s} s: {err}"
                ) from None
            time.sleep(delay_s)
            delay_s = min(2 * delay_s, 0.5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is None:
        return sock
    try:
        # The handshake runs here, under the socket's remaining timeout.
        return tls.context().wrap_socket(sock, server_hostname=tls.server_name or host)
    except ssl.SSLCertVerificationError as err:
        sock.close()
        raise TransportError(
            f"cannot reach the data-plane server at {address}: its TLS certificate "
            f"is not trusted ({err.verify_message})"
        ) from None
    except (OSError, ValueError) as err:
        sock.close()
        raise TransportError(
            f"cannot reach the data-plane server at {address}: TLS handshake failed "
            f"({err})"
        ) from None

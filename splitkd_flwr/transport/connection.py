"""One device's connection on the server: TLS, token, then the round's frames.

All I/O of a connection happens on its own thread (an OpenSSL connection must not be
read and written from two threads). The socket's short timeout is the thread's tick:
on each tick without progress it checks whether the round was ended elsewhere
(``RoundHandle.fail``, ``wait`` timeout, server stop) and the device's idle clock, and
if so tells the device why, itself.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.transport import wire
from splitkd_flwr.transport.codec import decode_frame, encode_frame, encoded_nbytes
from splitkd_flwr.transport.rounds import CallbackError, RoundHandle

__all__ = ["Limits", "refuse", "serve"]

log = logging.getLogger(__name__)

Claim = Callable[[str], "RoundHandle | str"]


@dataclass(frozen=True)
class Limits:
    """What a connection may take and how long it waits (the server's settings)."""

    idle_timeout_s: float
    max_frame_bytes: int
    tick_s: float  # socket timeout: how often a waiting thread looks around
    linger_s: float = 0.5  # longest wait for the device to read a last message


class _RoundOver(Exception):
    """The round must end; ``error`` is None if it was ended elsewhere."""

    def __init__(self, error: TransportError | None) -> None:
        super().__init__(str(error))
        self.error = error


def serve(
    sock: socket.socket,
    peer: str,
    context: ssl.SSLContext | None,
    claim: Claim,
    limits: Limits,
    stopping: threading.Event,
) -> None:
    """Serve one connection to its end; never raises (errors end the round)."""
    conn = _Connection(sock, peer, limits, stopping)
    try:
        chan = conn.open(context)
        if chan is not None:
            conn.run(chan, claim)
    except Exception:  # a bug must end the round, not the thread silently
        log.exception("data-plane connection from %s failed", peer)
    finally:
        conn.sock.close()


def refuse(
    sock: socket.socket,
    peer: str,
    context: ssl.SSLContext | None,
    reason: str,
    limits: Limits,
) -> None:
    """Tell a device ``reason`` (e.g. server busy) and close, within ``linger_s`` or so."""
    log.warning("data plane refused %s: %s", peer, reason)
    quick = Limits(limits.linger_s, 0, limits.tick_s, limits.linger_s)
    conn = _Connection(sock, peer, quick, threading.Event())
    try:
        chan = conn.open(context)
        if chan is not None:
            chan.goodbye(wire.REFUSE, reason, limits.linger_s)
    finally:
        conn.sock.close()


class _Connection:
    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        limits: Limits,
        stopping: threading.Event,
    ) -> None:
        self.sock, self.peer, self.limits, self.stopping = sock, peer, limits, stopping
        self.handshake_deadline = time.monotonic() + limits.idle_timeout_s
        # What the connection is doing, for the message if the round ends under it.
        self.doing = "waiting for the device's first frame"

    def _before_claim(self) -> None:
        if self.stopping.is_set():
            raise TimeoutError("data-plane server stopped")
        if time.monotonic() > self.handshake_deadline:
            raise TimeoutError(
                f"no round token within idle_timeout_s={self.limits.idle_timeout_s}"
            )

    def open(self, context: ssl.SSLContext | None) -> wire.Channel | None:
        """The TLS handshake (if any); None if it failed (logged)."""
        if context is not None:
            try:
                self.sock = context.wrap_socket(
                    self.sock, server_side=True, do_handshake_on_connect=False
                )
                while True:
                    try:
                        self.sock.do_handshake()
                        break
                    except TimeoutError:
                        self._before_claim()
            except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
                log.warning(
                    "data-plane TLS handshake with %s failed: %s", self.peer, err
                )
                return None
        return wire.Channel(self.sock, self._before_claim)

    def run(self, chan: wire.Channel, claim: Claim) -> None:
        """Read the token, then serve the round it opens."""
        try:
            tag, length = chan.recv_head()
            if tag != wire.TOKEN:
                raise TransportError(
                    f"malformed handshake: tag {tag!r}, expected a token"
                )
            handle = claim(chan.recv_text(length))
        except (OSError, wire.PeerGone, TransportError) as err:
            log.warning("data plane refused %s: %s", self.peer, err)
            chan.goodbye(wire.REFUSE, str(err), self.limits.linger_s)
            return
        if isinstance(handle, str):
            log.warning("data plane refused %s: %s", self.peer, handle)
            chan.goodbye(wire.REFUSE, handle, self.limits.linger_s)
            return
        handle.attach(self.peer)
        chan.on_wait = lambda: self._tick(chan, handle)
        try:
            chan.send(wire.ACCEPT)
            self._frames(chan, handle)
        except wire.PeerGone as gone:
            what = "reset the connection" if gone.reset else "disconnected"
            reason = self._reason(f"device {what} before closing the round", chan)
            self._end(chan, handle, TransportError(reason), reason)
        except _RoundOver as over:
            if over.error is None:  # ended elsewhere: wait timeout, close, stop
                chan.goodbye(wire.ERROR, str(handle.error), self.limits.linger_s)
            else:
                self._end(chan, handle, over.error, str(over.error))
        except CallbackError as err:
            cause = err.__cause__
            self._end(chan, handle, cause, f"server callback failed: {cause!r}")
        except TransportError as err:
            self._end(chan, handle, err, str(err))
        except Exception as err:
            self._end(chan, handle, err, f"data-plane server error: {err!r}")
            raise

    def _reason(self, what: str, chan: wire.Channel) -> str:
        """Why a round ended under the connection, naming any frame it cut short."""
        reason = f"{what} (while {self.doing})"
        partial = chan.partial()
        if partial is not None:
            reason += f"; {partial} were dropped"
        return reason

    def _tick(self, chan: wire.Channel, handle: RoundHandle) -> None:
        if handle.done:
            raise _RoundOver(None)
        if time.monotonic() - chan.last_io > self.limits.idle_timeout_s:
            what = f"device silent for more than idle_timeout_s={self.limits.idle_timeout_s}"
            raise _RoundOver(TransportError(self._reason(what, chan)))

    def _end(
        self,
        chan: wire.Channel,
        handle: RoundHandle,
        error: BaseException | None,
        message: str,
    ) -> None:
        """Record the outcome (unless the round ended already) and tell the device."""
        if handle.finish(error):
            log.warning("data-plane round from %s failed: %s", self.peer, message)
        else:
            message = str(handle.error)
        chan.goodbye(wire.ERROR, message, self.limits.linger_s)

    def _frames(self, chan: wire.Channel, handle: RoundHandle) -> None:
        limit = handle.max_frame_bytes or self.limits.max_frame_bytes
        stats = handle.stats
        while True:
            tag, length = chan.recv_head()
            if tag == wire.CLOSE:
                if length:
                    raise TransportError("malformed message: a close with a body")
                if handle.finish(None):
                    chan.goodbye(wire.CLOSED, "", self.limits.linger_s)
                else:  # ended by the server meanwhile
                    chan.goodbye(wire.ERROR, str(handle.error), self.limits.linger_s)
                return
            if tag == wire.ABORT:
                reason = chan.recv_text(length)
                raise TransportError(f"device aborted the round: {reason}")
            if tag != wire.DATA:
                raise TransportError(f"malformed message: unknown tag {tag!r}")
            self.doing = f"receiving frame {stats.frames + 1}"
            buf = chan.recv_frame(length, limit)
            self.doing = f"computing the answer to frame {stats.frames + 1}"
            start = time.perf_counter()
            frame = decode_frame(buf, max_frame_bytes=limit, spec=handle.spec)
            decoded = time.perf_counter()
            out = handle.call(frame)
            if handle.done:  # ended by the server while on_frame ran
                raise _RoundOver(None)
            if wire.hung_up(chan.sock):
                # The device vanished while on_frame ran: read what it left (an
                # abort's reason) up to its end, which names what the server was doing.
                self._after_hang_up(chan)
            answered = time.perf_counter()
            parts = encode_frame(out, handle.wire_dtype)
            stats.codec_s += decoded - start + time.perf_counter() - answered
            stats.frames += 1
            stats.bytes_up += len(buf)
            stats.bytes_down += encoded_nbytes(parts)
            self.doing = f"sending the answer to frame {stats.frames}"
            chan.send(wire.DATA, parts)
            self.doing = f"waiting for frame {stats.frames + 1} or the close"

    def _after_hang_up(self, chan: wire.Channel) -> None:
        tag, length = chan.recv_head()
        if tag == wire.ABORT:
            reason = chan.recv_text(length)
            raise TransportError(f"device aborted the round: {reason}")
        raise wire.PeerGone(False)

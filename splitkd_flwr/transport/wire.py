"""The data plane's wire protocol: length-prefixed messages on one connection per round.

Every message is a tag byte, a little-endian u64 body length, then the body. A frame
(``DATA``) is one message whatever its size: the receiver checks the length against its
limit before allocating, then receives the body straight into the frame buffer.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence

import numpy as np

from splitkd_flwr.core.errors import TransportError

__all__ = ["Channel", "PeerGone"]

HEAD = struct.Struct("<cQ")  # tag, body length in bytes

# Device -> server.
TOKEN = b"T"  # first message: the round's one-time token (UTF-8)
CLOSE = b"C"  # the round ended cleanly (empty body)
ABORT = b"E"  # the device gave up (UTF-8 reason)
# Server -> device.
ACCEPT = b"A"  # token accepted, the round is open (empty body)
REFUSE = b"R"  # token refused or server busy (UTF-8 reason); the connection ends
CLOSED = b"K"  # answer to CLOSE: the round ended without error (empty body)
ERROR = b"X"  # the server ended the round (UTF-8 reason); the connection ends
# Both directions.
DATA = b"D"  # one encoded frame

MAX_TEXT_BYTES = 4096  # tokens and reasons
# Parts below this size are joined before an SSL send: one TLS record, not several.
_JOIN_BELOW_BYTES = 64 * 1024
_IOV_MAX = 512  # buffers per sendmsg call (Linux allows 1024)


class PeerGone(Exception):
    """The peer closed the connection (``reset=False``) or it broke (``reset=True``)."""

    def __init__(self, reset: bool, detail: str = "") -> None:
        super().__init__(detail or ("connection reset" if reset else "end of stream"))
        self.reset = reset


def text(body: bytes | memoryview) -> str:
    """Decode a token or reason body (never raises)."""
    return bytes(body).decode(errors="replace")


def encode_text(value: str) -> bytes:
    """A token or reason as a body of at most ``MAX_TEXT_BYTES``."""
    return value.encode()[:MAX_TEXT_BYTES]


def hung_up(sock: socket.socket) -> bool:
    """Whether the peer closed or reset its end (checked without reading; Linux)."""
    if not hasattr(select, "poll"):
        return False  # no poll (Windows): found at the next read instead
    poller = select.poll()
    # POLLRDHUP (Linux): the peer's FIN arrived, even with unread data before it.
    rdhup = getattr(select, "POLLRDHUP", 0)
    poller.register(sock, rdhup | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


class Channel:
    """The messages of one connection, sent and received from one thread.

    The socket has a short timeout (a tick); on each tick without progress the
    channel calls ``on_wait``, which raises to give up (deadline, round ended, idle
    peer) or returns to keep waiting.

    Parameters
    ----------
    sock : socket.socket
        A connected TCP socket, or an ``ssl.SSLSocket`` after its handshake.
    on_wait : Callable[[], None]
        Called on every tick spent waiting; may be replaced between operations.
    """

    def __init__(self, sock: socket.socket, on_wait: Callable[[], None]) -> None:
        self.sock = sock
        self.on_wait = on_wait
        # SSL sockets have no sendmsg: their parts go one by one.
        self._scatter = not isinstance(sock, ssl.SSLSocket)
        self.last_io = time.monotonic()  # start of the operation or its last progress
        # (what, got, total) of a message received in part; None between messages.
        self.rx_partial: tuple[str, int, int] | None = None
        # False once a send stopped in the middle of a message: nothing more can follow.
        self.tx_clean = True

    def partial(self) -> str | None:
        """What a message received in part lacks, e.g. ``"5 of 9 bytes of a frame"``."""
        if self.rx_partial is None:
            return None
        what, got, total = self.rx_partial
        return f"{got} of {total} bytes of {what}"

    # ----------------------------------------------------------------- sending
    def send(self, tag: bytes, parts: Sequence[bytes | memoryview] = ()) -> None:
        """Send one message: ``tag``, the parts' total length, the parts unjoined."""
        if not self.tx_clean:
            raise TransportError("cannot send: an earlier message was cut short")
        views = [memoryview(p).cast("B") for p in parts]
        views = [v for v in views if v.nbytes]
        head = HEAD.pack(tag, sum(v.nbytes for v in views))
        self.last_io = time.monotonic()
        self.tx_clean = False
        if self._scatter:
            self._sendmsg([memoryview(head), *views])
        else:
            for piece in _join_small([memoryview(head), *views]):
                self._send_ssl(piece)
        self.tx_clean = True

    def _sendmsg(self, views: list[memoryview]) -> None:
        first = 0
        while first < len(views):
            try:
                sent = self.sock.sendmsg(views[first : first + _IOV_MAX])
            except TimeoutError:
                self.on_wait()
                continue
            except OSError as err:
                raise PeerGone(True, str(err)) from err
            self.last_io = time.monotonic()
            while sent:
                if sent >= views[first].nbytes:
                    sent -= views[first].nbytes
                    first += 1
                else:
                    views[first] = views[first][sent:]
                    sent = 0

    def _send_ssl(self, view: memoryview) -> None:
        done = 0
        while done < view.nbytes:
            try:
                # After a timeout OpenSSL needs the same buffer again; it resumes.
                done += self.sock.send(view[done:])
            except TimeoutError:
                self.on_wait()
                continue
            except OSError as err:  # ssl.SSLError included
                raise PeerGone(True, str(err)) from err
            self.last_io = time.monotonic()

    # --------------------------------------------------------------- receiving
    def recv_head(self) -> tuple[bytes, int]:
        """Receive a message header: (tag, body length)."""
        head = bytearray(HEAD.size)
        self._recv_into(memoryview(head), "a message header")
        tag, length = HEAD.unpack(head)
        return tag, length

    def recv_text(self, length: int) -> str:
        """Receive a token or reason body of ``length`` bytes."""
        if length > MAX_TEXT_BYTES:
            raise TransportError(
                f"malformed message: text of {length} bytes exceeds {MAX_TEXT_BYTES}"
            )
        body = bytearray(length)
        self._recv_into(memoryview(body), "a message")
        return text(body)

    def recv_frame(self, length: int, max_frame_bytes: int) -> memoryview:
        """Receive a frame body into a fresh writable buffer, its size checked first."""
        if length > max_frame_bytes:
            raise TransportError(
                f"malformed frame: {length} bytes exceed max_frame_bytes={max_frame_bytes}"
            )
        # A numpy buffer: writable, so decoded tensors view it without a copy.
        buf = memoryview(np.empty(length, dtype=np.uint8))
        self._recv_into(buf, "a frame")
        return buf

    def _recv_into(self, view: memoryview, what: str) -> None:
        total, got = view.nbytes, 0
        self.last_io = time.monotonic()
        while got < total:
            # A header not begun is no partial message; a frame's body is, at once.
            self.rx_partial = (what, got, total) if got or what == "a frame" else None
            try:
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                self.on_wait()
                continue
            except OSError as err:  # resets and TLS errors
                raise PeerGone(True, str(err)) from err
            if n == 0:
                raise PeerGone(False)
            got += n
            self.last_io = time.monotonic()
        self.rx_partial = None

    # ----------------------------------------------------------------- ending
    def goodbye(self, tag: bytes | None, reason: str, linger_s: float) -> None:
        """Send a last message if the stream allows, then end the connection gently.

        Half-closes, then reads and discards until the peer closes (at most
        ``linger_s``): closing with unread data would reset the connection and could
        destroy the last message before the peer read it.
        """
        deadline = time.monotonic() + linger_s

        def until_deadline() -> None:
            if time.monotonic() > deadline:
                raise TimeoutError("linger time over")

        self.on_wait = until_deadline
        try:
            self.sock.settimeout(max(0.01, linger_s / 5))
            if tag is not None and self.tx_clean:
                self.send(tag, [encode_text(reason)])
            self.sock.shutdown(socket.SHUT_WR)
            sink = bytearray(1 << 16)
            while True:
                try:
                    if not self.sock.recv_into(sink):
                        break
                except TimeoutError:
                    until_deadline()
        except (OSError, PeerGone, TransportError):
            pass
        finally:
            self.sock.close()


def _join_small(views: list[memoryview]) -> list[memoryview]:
    """Join runs of small buffers (headers, padding) so TLS sends fewer records."""
    out: list[memoryview] = []
    run: list[memoryview] = []
    for view in views:
        if view.nbytes < _JOIN_BELOW_BYTES:
            run.append(view)
            continue
        if run:
            out.append(memoryview(b"".join(run)))
            run = []
        out.append(view)
    if run:
        out.append(memoryview(b"".join(run)))
    return out

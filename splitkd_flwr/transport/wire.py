"""The data plane's gRPC protocol: one bidirectional stream per round, frames sent in chunks."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from splitkd_flwr.core.errors import TransportError

# One generic stream-stream method carrying raw bytes: no protoc code generation needed.
METHOD = "/splitkd.DataPlane/Round"
TOKEN_KEY = "splitkd-round-token"  # gRPC metadata key (lower case, as gRPC requires)

# Chunks of about 1 MiB measured fastest for 16 MiB frames on loopback (see
# bench/exchange.py): Python gRPC copies each message several times, large ones more.
CHUNK_BYTES = 1 << 20  # target; a frame is cut into equal chunks of 2/3 to 3/2 of it

# Message tags (first byte of every message).
DATA = b"D"  # device <-> server: one chunk of a frame: tag, <QQ> total, offset, bytes
CLOSE = b"C"  # device -> server: the round ended cleanly
ABORT = b"E"  # device -> server: the device gave up; UTF-8 reason follows
ACCEPT = b"A"  # server -> device: token accepted, the round is open

_CHUNK_HEAD = struct.Struct("<QQ")
_HEAD_BYTES = 1 + _CHUNK_HEAD.size


def channel_options() -> list[tuple[str, int]]:
    """gRPC options for both ends: messages are at most one chunk plus its header."""
    limit = 2 * CHUNK_BYTES
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]


def chunk_frame(parts: list[memoryview]) -> Iterator[bytes]:
    """Cut an encoded frame into DATA messages of equal size near ``CHUNK_BYTES``."""
    total = sum(p.nbytes for p in parts)
    # Equal chunks: a frame just over 1 MiB goes as one message, not 1 MiB + a crumb.
    n_chunks = max(1, round(total / CHUNK_BYTES))
    step = -(-total // n_chunks)
    offset = 0
    pending: list[memoryview] = []
    room = step
    for part in parts:
        while part.nbytes:
            piece, part = part[:room], part[room:]
            pending.append(piece)
            room -= piece.nbytes
            if room == 0:
                yield b"".join([DATA, _CHUNK_HEAD.pack(total, offset), *pending])
                offset += step
                pending, room = [], step
    if pending:
        yield b"".join([DATA, _CHUNK_HEAD.pack(total, offset), *pending])


class Reassembler:
    """Collects DATA messages into one writable buffer per frame, checking every chunk.

    Parameters
    ----------
    max_frame_bytes : int
        A frame announcing more bytes is refused before any of it is buffered.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf: memoryview | None = None
        self._got = 0

    def partial(self) -> str | None:
        """``None`` between frames; else how much of the frame in progress arrived."""
        if self._buf is None:
            return None
        return f"{self._got} of {len(self._buf)} bytes of a frame"

    def add(self, msg: bytes) -> memoryview | None:
        """Add one DATA message; return the frame once its last chunk arrived."""
        if len(msg) < _HEAD_BYTES:
            raise TransportError(
                f"malformed chunk: {len(msg)} bytes, header needs {_HEAD_BYTES}"
            )
        total, offset = _CHUNK_HEAD.unpack_from(msg, 1)
        if self._buf is None:
            if total > self.max_frame_bytes:
                raise TransportError(
                    f"malformed frame: {total} bytes exceed "
                    f"max_frame_bytes={self.max_frame_bytes}"
                )
            if total == 0 or offset != 0:
                raise TransportError(
                    f"malformed chunk: frame of {total} bytes at offset {offset}"
                )
            # A numpy buffer: writable (zero-copy decoding) and, unlike a bytearray,
            # filled by memcpy from a memoryview (bytearray slices copy ~40x slower).
            self._buf = memoryview(np.empty(total, dtype=np.uint8))
        elif total != len(self._buf) or offset != self._got:
            raise TransportError(
                f"malformed chunk: got ({total}, {offset}), expected "
                f"({len(self._buf)}, {self._got})"
            )
        end = self._got + len(msg) - _HEAD_BYTES
        if end > total:
            raise TransportError(
                f"malformed chunk: {end} bytes received for a {total}-byte frame"
            )
        self._buf[self._got : end] = memoryview(msg)[_HEAD_BYTES:]
        self._got = end
        if end < total:
            return None
        frame, self._buf, self._got = self._buf, None, 0
        return frame

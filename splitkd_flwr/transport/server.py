"""The server's data-plane endpoint: a gRPC stream per round, one callback per frame."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.transport import wire
from splitkd_flwr.transport.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    WIRE_DTYPES,
    decode_frame,
    encode_frame,
    encoded_nbytes,
)
from splitkd_flwr.transport.frame import TensorSpec
from splitkd_flwr.transport.rounds import (
    CallbackError,
    OnFrame,
    RoundHandle,
    cancel_with_reason,
)
from splitkd_flwr.transport.tls import ServerTLS

__all__ = ["DataPlaneServer"]

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16


class _StreamEnded(Exception):
    """The device's stream ended (cancelled, broken or half-closed) without CLOSE."""


@dataclass
class _Idle:
    """Shared by a stream handler and its watchdog."""

    waiting_since: float | None  # monotonic time the server began waiting on the device
    timed_out: bool = False
    # What the handler is doing, for the message if the stream ends under it.
    doing: str = "waiting for the device's first frame"
    partial: str | None = None  # the frame in progress, if one has started


def _lost_reason(idle: _Idle, idle_timeout_s: float) -> str:
    """Why a stream that ended without CLOSE ended, naming any frame it cut short."""
    if idle.timed_out:
        reason = f"device silent for more than idle_timeout_s={idle_timeout_s}"
    else:
        reason = "device disconnected before closing the round"
    reason += f" (while {idle.doing})"
    if idle.partial is not None:
        reason += f"; {idle.partial} was dropped"
    return reason


class DataPlaneServer:
    """Hosts rounds: a device connects with a one-time token and streams frames.

    Parameters
    ----------
    host, port : str, int
        Where to listen; ``port=0`` binds a free port (``start`` returns it).
    max_frame_bytes : int
        Larger frames from a device end its round with an error.
    idle_timeout_s : float
        A device silent this long while the server waits for it loses its round.
    tls : ServerTLS | None
        Certificate and key; ``None`` listens without encryption (loopback only).
    max_workers : int
        Threads serving streams; one per concurrently connected device.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        idle_timeout_s: float = 60.0,
        tls: ServerTLS | None = None,
        max_workers: int = 4,
    ) -> None:
        if idle_timeout_s <= 0:
            raise TransportError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        self.host, self.port = host, port
        self.max_frame_bytes = max_frame_bytes
        self.idle_timeout_s = idle_timeout_s
        self.tls = tls
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._open: dict[str, RoundHandle] = {}  # opened, device not yet connected
        self._live: dict[str, RoundHandle] = {}  # device connected
        self._used: set[str] = set()
        self._server: grpc.Server | None = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> str:
        """Start listening; return the address devices connect to (``host:port``)."""
        self._pool = ThreadPoolExecutor(self._max_workers, "splitkd-dataplane")
        self._server = grpc.server(self._pool, options=wire.channel_options())
        handler = grpc.stream_stream_rpc_method_handler(self._serve)
        service, method = wire.METHOD.strip("/").split("/")
        generic = grpc.method_handlers_generic_handler(service, {method: handler})
        self._server.add_generic_rpc_handlers((generic,))
        bind = f"{self.host}:{self.port}"
        if self.tls is None:
            self.port = self._server.add_insecure_port(bind)
        else:
            self.port = self._server.add_secure_port(bind, self.tls.credentials())
        self._server.start()
        address = f"{self.host}:{self.port}"
        log.info(
            "data plane listening on %s (%s)",
            address,
            "TLS" if self.tls else "insecure",
        )
        return address

    def open_round(
        self,
        token: str,
        on_frame: OnFrame,
        *,
        spec: Mapping[str, TensorSpec] | None = None,
        wire_dtype: str = "fp32",
        max_frame_bytes: int | None = None,
    ) -> RoundHandle:
        """Accept one device presenting ``token``; run ``on_frame`` on each of its frames.

        Parameters
        ----------
        token : str
            One-time secret (``secrets.token_urlsafe``), at least 16 characters.
        on_frame : Callable[[Frame], Frame]
            Called in order, one frame at a time, on a server thread; its return value is
            sent back. If it raises, the round ends with that error on both sides.
        spec : Mapping[str, TensorSpec] | None
            Expected up frames; a mismatch ends the round.
        wire_dtype : str
            Wire dtype of the down frames (``WIRE_DTYPES``).
        max_frame_bytes : int | None
            This round's limit on an up frame, below the server's (``None``: the
            server's); a frame announcing more is refused at its first chunk.
        """
        if len(token) < MIN_TOKEN_CHARS:
            raise TransportError(
                f"round token must have >= {MIN_TOKEN_CHARS} characters"
            )
        if wire_dtype not in WIRE_DTYPES:
            raise TransportError(
                f"wire_dtype={wire_dtype!r} is not one of {WIRE_DTYPES}"
            )
        limit = self.max_frame_bytes
        if max_frame_bytes is not None:
            limit = min(limit, max_frame_bytes)
        handle = RoundHandle(token, on_frame, spec, wire_dtype, self._forget, limit)
        with self._lock:
            if token in self._used or token in self._open or token in self._live:
                raise TransportError("round token already in use; make a fresh one")
            self._open[token] = handle
        return handle

    def stop(self, grace_s: float = 1.0) -> None:
        """End every round (with an error if unfinished), stop listening, join threads."""
        with self._lock:
            handles = [*self._open.values(), *self._live.values()]
        for handle in handles:
            handle.fail(TransportError("data-plane server stopped"))
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> DataPlaneServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _forget(self, token: str) -> None:
        with self._lock:
            self._open.pop(token, None)
            self._live.pop(token, None)
            self._used.add(token)

    def _claim(self, token: str) -> RoundHandle | str:
        with self._lock:
            handle = self._open.pop(token, None)
            if handle is not None:
                self._live[token] = handle
                return handle
            if token in self._used or token in self._live:
                return "round token already used"
            return "unknown round token"

    def _serve(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        token = dict(context.invocation_metadata() or ()).get(wire.TOKEN_KEY, "")
        handle = self._claim(token)
        if isinstance(handle, str):
            log.warning("data plane refused %s: %s", context.peer(), handle)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, handle)
        handle.attach(context)
        idle = _Idle(time.monotonic())
        watchdog = threading.Thread(target=self._watch, args=(handle, context, idle))
        watchdog.start()
        try:
            yield wire.ACCEPT
            yield from self._frames(handle, requests, context, idle)
        except (grpc.RpcError, _StreamEnded):  # gRPC reports a lost peer either way
            self._lost(handle, _lost_reason(idle, self.idle_timeout_s))
        except GeneratorExit:
            # gRPC closes the handler when the RPC ends while it is busy (typically the
            # device vanished while on_frame ran): nothing can be sent any more.
            self._lost(handle, _lost_reason(idle, self.idle_timeout_s))
            raise
        except CallbackError as err:
            self._end(
                handle,
                context,
                err.__cause__,
                f"server callback failed: {err.__cause__!r}",
            )
        except TransportError as err:
            self._end(handle, context, err, str(err))
        finally:
            # no-op if ended
            handle.finish(TransportError("the stream handler stopped"))
            watchdog.join()

    def _lost(self, handle: RoundHandle, reason: str) -> None:
        if handle.finish(TransportError(reason)):
            log.warning(
                "data-plane round from %s failed: %s", handle.stats.peer, reason
            )

    def _end(
        self,
        handle: RoundHandle,
        context: grpc.ServicerContext,
        error: BaseException,
        msg: str,
    ) -> None:
        if handle.finish(error):
            log.warning("data-plane round from %s failed: %s", handle.stats.peer, msg)
        context.abort(grpc.StatusCode.ABORTED, msg)

    def _frames(
        self,
        handle: RoundHandle,
        requests: Iterator[bytes],
        context: grpc.ServicerContext,
        idle: _Idle,
    ) -> Iterator[bytes]:
        rx = wire.Reassembler(handle.max_frame_bytes or self.max_frame_bytes)
        for msg in requests:
            tag = msg[:1]
            idle.partial = rx.partial()
            if tag == wire.CLOSE:
                if idle.partial is not None:
                    raise TransportError(
                        f"device closed the round in the middle of a frame "
                        f"({idle.partial}); the round is not committed"
                    )
                handle.finish(None)
                return
            if tag == wire.ABORT:
                reason = msg[1:].decode(errors="replace")
                dropped = f" ({idle.partial} dropped)" if idle.partial else ""
                raise TransportError(f"device aborted the round: {reason}{dropped}")
            if tag != wire.DATA:
                raise TransportError(f"malformed message: unknown tag {tag!r}")
            idle.waiting_since = time.monotonic()
            idle.doing = f"receiving frame {handle.stats.frames + 1}"
            buf = rx.add(msg)
            idle.partial = rx.partial()
            if buf is None:
                continue
            idle.waiting_since = None  # the server is busy, not the device
            idle.doing = f"computing the answer to frame {handle.stats.frames + 1}"
            start = time.perf_counter()
            frame = decode_frame(buf, max_frame_bytes=len(buf), spec=handle.spec)
            decoded = time.perf_counter()
            out = handle.call(frame)
            if not context.is_active():
                # The device vanished while on_frame ran: say so, not "stream stopped".
                raise _StreamEnded()
            answered = time.perf_counter()
            parts = encode_frame(out, handle.wire_dtype)
            stats = handle.stats
            stats.codec_s += decoded - start + time.perf_counter() - answered
            stats.frames += 1
            stats.bytes_up += len(buf)
            stats.bytes_down += encoded_nbytes(parts)
            # a device that stops reading idles out
            idle.waiting_since = time.monotonic()
            idle.doing = f"sending the answer to frame {stats.frames}"
            yield from wire.chunk_frame(parts)
            idle.doing = f"waiting for frame {stats.frames + 1} or the close"
        raise _StreamEnded()

    def _watch(
        self, handle: RoundHandle, context: grpc.ServicerContext, idle: _Idle
    ) -> None:
        tick_s = min(0.25, self.idle_timeout_s / 5)
        while not handle.wait_done(tick_s):
            since = idle.waiting_since
            if since is not None and time.monotonic() - since > self.idle_timeout_s:
                # Cancelling wakes the handler blocked on the device's next message.
                idle.timed_out = True
                cancel_with_reason(context, _lost_reason(idle, self.idle_timeout_s))
                return

"""One round on the server's data plane: its token, callback, statistics and outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
from grpc._cython import cygrpc

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.transport.frame import Frame, TensorSpec

__all__ = ["OnFrame", "RoundHandle", "RoundStats", "cancel_with_reason"]

OnFrame = Callable[[Frame], Frame]


@dataclass
class RoundStats:
    """What one round moved and where its server-side time went (measured)."""

    frames: int = 0  # up frames answered
    bytes_up: int = 0  # encoded frame bytes received (before gRPC/TCP overhead)
    bytes_down: int = 0  # encoded frame bytes sent
    wall_s: float = 0.0  # from the device's connection to the round's end
    callback_s: float = 0.0  # inside on_frame
    codec_s: float = 0.0  # decoding up frames + encoding down frames
    peer: str = ""  # the device's address as gRPC reports it


def cancel_with_reason(context: grpc.ServicerContext, reason: str) -> None:
    """End the device's stream from any thread, telling the device ``reason``.

    ``context.abort`` works only in the handler's thread, and ``context.cancel`` sends a
    bare CANCELLED; the core call's cancel-with-status (not part of grpc's public API)
    sends ABORTED with the reason. Where it is missing, the bare cancel still ends the
    stream and the device says "the server cancelled the round".
    """
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        call.cancel(cygrpc.StatusCode.aborted, reason)
    except (AttributeError, TypeError):
        context.cancel()


class CallbackError(Exception):
    """Carries an exception raised by ``on_frame`` out of the stream handler."""


class RoundHandle:
    """The server's view of one open round; made by ``DataPlaneServer.open_round``.

    The round ends when the device closes it (``error is None``), or with an error:
    bad frame, callback failure, idle or disconnected device, ``wait`` timeout,
    ``close`` before the device finished, server stop.
    """

    def __init__(
        self,
        token: str,
        on_frame: OnFrame,
        spec: Mapping[str, TensorSpec] | None,
        wire_dtype: str,
        forget: Callable[[str], None],
        max_frame_bytes: int | None = None,
    ) -> None:
        self.token = token
        self.spec = spec
        self.wire_dtype = wire_dtype
        # This round's own limit on an up frame (None: the server's).
        self.max_frame_bytes = max_frame_bytes
        self.stats = RoundStats()
        self.error: BaseException | None = None
        self._on_frame = on_frame
        self._forget = forget
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._idle = threading.Event()  # set while no on_frame call is running
        self._idle.set()
        self._context: grpc.ServicerContext | None = None
        self._started = 0.0

    @property
    def done(self) -> bool:
        """Whether the round has ended (cleanly or not)."""
        return self._done.is_set()

    def wait_done(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the round's end; return whether it ended."""
        return self._done.wait(timeout_s)

    def wait(self, timeout_s: float | None = None) -> RoundStats:
        """Block until the round ends; past ``timeout_s`` end it with a TransportError.

        Returns the statistics either way: check ``error`` for the outcome. On return no
        ``on_frame`` call of this round is running, so the caller may roll back safely.
        """
        if not self._done.wait(timeout_s):
            self.fail(TransportError(f"round did not finish within {timeout_s} s"))
        self._idle.wait()
        return self.stats

    def close(self) -> None:
        """End the round (an error if the device had not closed it) and revoke its token."""
        self.fail(
            TransportError("round closed by the server before the device closed it")
        )
        self._idle.wait()

    def attach(self, context: grpc.ServicerContext) -> None:
        """Bind the device's stream; called once, when its token is accepted."""
        self._context = context
        self._started = time.monotonic()
        self.stats.peer = context.peer()

    def call(self, frame: Frame) -> Frame:
        """Run ``on_frame`` unless the round has ended; never two calls at once."""
        with self._lock:
            if self._done.is_set():
                raise TransportError("round already ended")
            self._idle.clear()
        start = time.perf_counter()
        try:
            return self._on_frame(frame)
        except Exception as err:
            raise CallbackError() from err
        finally:
            self.stats.callback_s += time.perf_counter() - start
            self._idle.set()

    def finish(self, error: BaseException | None) -> bool:
        """Record the outcome once; return False if the round had already ended."""
        with self._lock:
            if self._done.is_set():
                return False
            self.error = error
            if self._started:
                self.stats.wall_s = time.monotonic() - self._started
            self._done.set()
        self._forget(self.token)
        return True

    def fail(self, error: TransportError) -> None:
        """End the round with ``error`` (no-op if ended) and cancel the device's stream."""
        if self.finish(error) and self._context is not None:
            # Wakes the stream handler; the device sees ABORTED with the reason.
            cancel_with_reason(self._context, str(error))

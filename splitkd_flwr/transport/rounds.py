"""One round on the server's data plane: its token, callback, statistics and outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.transport.frame import Frame, TensorSpec

__all__ = ["OnFrame", "RoundHandle", "RoundStats"]

OnFrame = Callable[[Frame], Frame]


@dataclass
class RoundStats:
    """What one round moved and where its server-side time went (measured)."""

    frames: int = 0  # up frames answered
    bytes_up: int = 0  # encoded frame bytes received (before message/TLS/TCP overhead)
    bytes_down: int = 0  # encoded frame bytes sent
    wall_s: float = 0.0  # from the device's connection to the round's end
    callback_s: float = 0.0  # inside on_frame
    codec_s: float = 0.0  # decoding up frames + encoding down frames
    peer: str = ""  # the device's address, "host:port"


class CallbackError(Exception):
    """Carries an exception raised by ``on_frame`` out of the connection's loop."""


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

    @property
    def connected(self) -> bool:
        """Whether a device presented this round's token (the round may have ended since)."""
        return self._started > 0

    def attach(self, peer: str) -> None:
        """Note the device's connection; called once, when its token is accepted."""
        self._started = time.monotonic()
        self.stats.peer = peer

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
        """End the round with ``error`` (no-op if ended).

        The connection's thread sees the end at its next tick (a fraction of a second),
        tells the device ``error``'s message and closes the connection.
        """
        self.finish(error)

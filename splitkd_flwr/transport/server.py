"""The server's data-plane endpoint: a TCP (or TLS) connection per round, one callback per frame."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Mapping

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.transport.codec import DEFAULT_MAX_FRAME_BYTES, WIRE_DTYPES
from splitkd_flwr.transport.connection import Limits, refuse, serve
from splitkd_flwr.transport.frame import TensorSpec
from splitkd_flwr.transport.rounds import OnFrame, RoundHandle
from splitkd_flwr.transport.tls import ServerTLS

__all__ = ["DataPlaneServer"]

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16


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
        Connected devices served at once, one thread each; a device beyond them is
        refused with ``data-plane server busy``.
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
        # How often a waiting thread looks at its round's end and idle clock.
        tick_s = min(0.25, idle_timeout_s / 5)
        self._limits = Limits(idle_timeout_s, max_frame_bytes, tick_s)
        self._lock = threading.Lock()
        self._open: dict[str, RoundHandle] = {}  # opened, device not yet connected
        self._live: dict[str, RoundHandle] = {}  # device connected
        self._used: set[str] = set()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()

    def start(self) -> str:
        """Start listening; return the address devices connect to (``host:port``)."""
        context = self.tls.context() if self.tls is not None else None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.create_server(
            (self.host, self.port), family=family, backlog=64
        )
        self._listener.settimeout(self._limits.tick_s)
        self.port = self._listener.getsockname()[1]
        self._stopping.clear()
        self._acceptor = threading.Thread(
            target=self._accept, args=(context,), name="splitkd-dataplane-accept"
        )
        self._acceptor.start()
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
            server's); a frame announcing more is refused from its length, before
            anything is allocated.
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
        """End every round (with an error if unfinished), stop listening, join threads.

        Each connection tells its device ``data-plane server stopped`` and waits at
        most ``Limits.linger_s`` for it to read that; ``grace_s`` is kept for callers
        (the threads end within a tick plus that linger, or when ``on_frame`` returns).
        """
        self._stopping.set()
        with self._lock:
            handles = [*self._open.values(), *self._live.values()]
        for handle in handles:
            handle.fail(TransportError("data-plane server stopped"))
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        while True:
            with self._lock:
                workers = list(self._workers)
            if not workers:
                break
            for worker in workers:
                worker.join()

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
            if self._stopping.is_set():
                return "data-plane server stopped"
            handle = self._open.pop(token, None)
            if handle is not None:
                self._live[token] = handle
                return handle
            if token in self._used or token in self._live:
                return "round token already used"
            return "unknown round token"

    def _accept(self, context: ssl.SSLContext | None) -> None:
        """Accept connections until ``stop``: one thread each, up to ``max_workers``."""
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as err:  # e.g. out of file descriptors: try again later
                log.warning("data plane: accept failed: %s", err)
                self._stopping.wait(self._limits.tick_s)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self._limits.tick_s)
            peer = f"{addr[0]}:{addr[1]}"
            with self._lock:
                busy = len(self._workers) >= self._max_workers
                if not busy:
                    worker = threading.Thread(
                        target=self._serve,
                        args=(sock, peer, context),
                        name=f"splitkd-dataplane-{peer}",
                    )
                    self._workers.add(worker)
                    worker.start()
            if busy:
                # Inline, bounded by the linger time: no thread beyond max_workers.
                reason = (
                    f"data-plane server busy: {self._max_workers} devices connected "
                    f"(max_workers={self._max_workers})"
                )
                refuse(sock, peer, context, reason, self._limits)

    def _serve(
        self, sock: socket.socket, peer: str, context: ssl.SSLContext | None
    ) -> None:
        try:
            serve(sock, peer, context, self._claim, self._limits, self._stopping)
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

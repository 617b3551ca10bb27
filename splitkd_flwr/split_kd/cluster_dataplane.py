"""K data-plane streams at once for a clustered round, and the server steps they share.

Each member of the cluster streams on its own token (its own :class:`RoundHandle`, served on
its own gRPC thread). Their frames meet in a :class:`FrameBatcher`: one server step runs at a
time (one accelerator), and every frame that arrived while the previous step ran goes into
the next one together (:meth:`ClusterServer.step_many`: one teacher forward for all of them,
then each member's own student step). A frame that arrives to an idle server is stepped at
once, alone: nothing waits for a batch to fill.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

from splitkd_flwr.core.constants import IGNORE_INDEX
from splitkd_flwr.hardware.monitor import HardwareMonitor
from splitkd_flwr.split.cluster import ClusterServer
from splitkd_flwr.split.step import ServerStepResult, Smashed
from splitkd_flwr.split_kd.dataplane import (
    GRAD,
    DataPlane,
    RoundInProgress,
    _Tally,
    _unmeasured,
    round_limits,
)
from splitkd_flwr.transport.stream import Frame


@dataclass
class _Pending:
    member: int
    smashed: Smashed
    done: bool = False
    result: ServerStepResult | BaseException | None = None
    seconds: float = 0.0


@dataclass
class BatchStats:
    """How the round's frames were grouped into server steps."""

    steps: int = 0
    frames: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)


class FrameBatcher:
    """Serialise the cluster's server steps; frames waiting together share one step."""

    def __init__(
        self,
        server: ClusterServer,
        measure: Callable[[str], AbstractContextManager[Any]] = _unmeasured,
    ) -> None:
        self.server = server
        self.measure = measure
        self.stats = BatchStats()
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._step_lock = threading.Lock()

    def submit(self, member: int, smashed: Smashed) -> tuple[ServerStepResult, float]:
        """Step ``member``'s frame (maybe with others'); return its result and its share of
        the step's seconds. Raises the error of its own step, if any."""
        item = _Pending(member, smashed)
        with self._queue_lock:
            self._queue.append(item)
        with self._step_lock:
            # a step that ran while we waited for the lock may already hold our frame
            if not item.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._run(batch)
        if isinstance(item.result, BaseException):
            raise item.result
        assert item.result is not None
        return item.result, item.seconds

    def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            with self.measure("server-compute"):
                results: list[Any] = self.server.step_many(
                    [(i.member, i.smashed) for i in batch]
                )
        except Exception as err:  # noqa: BLE001 - every frame of the step gets the error
            results = [err] * len(batch)
        seconds = (time.perf_counter() - started) / len(batch)
        for item, result in zip(batch, results):
            item.result, item.seconds, item.done = result, seconds, True
        s = self.stats
        s.steps += 1
        s.frames += len(batch)
        s.largest = max(s.largest, len(batch))
        s.sizes.append(len(batch))


@dataclass
class ClusterStreams:
    """The open streams of a cluster round, one per member, and their shared batcher."""

    streams: dict[int, RoundInProgress]
    batcher: FrameBatcher

    def failed(self, member: int) -> bool:
        """Whether ``member``'s stream has already ended in an error."""
        return self.streams[member].failed()

    def close(self) -> None:
        """Release every member's stream (idempotent)."""
        for stream in self.streams.values():
            stream.close()


def open_cluster(
    data_plane: DataPlane,
    tokens: Mapping[int, str],
    server: ClusterServer,
    cut_layer: int,
    monitor: HardwareMonitor | None = None,
    *,
    max_batch: int | None = None,
    max_seq_len: int | None = None,
) -> ClusterStreams:
    """Begin a cluster round on ``server`` and accept one stream per member (``tokens``:
    member -> one-time token). ``max_batch``, ``max_seq_len`` bound every frame, as in
    `DataPlane.open_round`."""
    spec, max_bytes = round_limits(server, max_batch, max_seq_len)
    server.begin_round(cut_layer, list(tokens))
    batcher = FrameBatcher(server, monitor.measure if monitor else _unmeasured)
    streams: dict[int, RoundInProgress] = {}
    try:
        _accept(data_plane, tokens, spec, max_bytes, batcher, streams)
    except Exception:
        for stream in streams.values():
            stream.close()
        server.rollback()
        raise
    return ClusterStreams(streams, batcher)


def _accept(
    data_plane: DataPlane,
    tokens: Mapping[int, str],
    spec: Mapping[str, Any],
    max_bytes: int | None,
    batcher: FrameBatcher,
    streams: dict[int, RoundInProgress],
) -> None:
    for member, token in tokens.items():
        tally = _Tally()

        def on_frame(
            frame: Frame, member: int = member, tally: _Tally = tally
        ) -> Frame:
            smashed = Smashed(**{name: frame[name] for name in spec})
            result, seconds = batcher.submit(member, smashed)
            tokens_n = int((smashed.labels != IGNORE_INDEX).sum())
            tally.add(result.loss, result.terms, tokens_n, seconds)
            return Frame({GRAD: result.grad_at_cut}, {"loss": result.loss})

        handle = data_plane.server.open_round(
            token,
            on_frame,
            spec=spec,
            wire_dtype=data_plane.wire_dtype,
            max_frame_bytes=max_bytes,
        )
        streams[member] = RoundInProgress(handle, tally)

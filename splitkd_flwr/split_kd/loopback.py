"""Flower's Grid API over in-process devices that run the real ClientApp handlers.

For tools that must see a real split round from the server's side without Flower's
processes (the privacy audit): every message the strategy sends goes to the device's
own handler (:mod:`splitkd_flwr.split_kd.client`) in a thread, as a SuperNode would run
it, and every message and reply is recorded. The data plane stays the real gRPC stream.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.app import Error as FlowerError
from flwr.supercore.task_identity import TaskIdentity

from splitkd_flwr.flower.protocol import QUERY_PROFILE
from splitkd_flwr.split_kd import client, protocol

Handler = Callable[[Message, Context], Message]
HANDLERS: dict[str, Handler] = {
    QUERY_PROFILE: client.profile,
    protocol.QUERY_PROVISION: client.provision,
    protocol.TRAIN: client.train,
    protocol.EVALUATE: client.evaluate,
}


@dataclass
class Exchange:
    """One Flower message to a device and the device's reply (None if it raised)."""

    message: Message
    reply: Message | None


class ThreadedGrid(ABC):
    """Flower's Grid calls (push, pull, send-and-receive) over in-process nodes.

    Each message is answered by :meth:`answer` in its own thread, as a SuperNode would
    run its ClientApp; an exception becomes the Error reply Flower would deliver, and an
    answer of None is a node that never replies.
    """

    def __init__(self) -> None:
        self._replies: dict[str, Message] = {}
        self._threads: dict[str, threading.Thread] = {}

    @abstractmethod
    def get_node_ids(self) -> Iterable[int]:
        """Every node's id."""

    @abstractmethod
    def answer(self, message: Message) -> Message | None:
        """The node's reply to ``message`` (None: no reply)."""

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Start each node's handler in a thread; return message ids."""
        ids = []
        for message in messages:
            message_id = f"m{len(self._threads) + 1}"
            thread = threading.Thread(
                target=self._answer, args=(message_id, message), daemon=True
            )
            self._threads[message_id] = thread
            thread.start()
            ids.append(message_id)
        return ids

    def _answer(self, message_id: str, message: Message) -> None:
        reply: Message | None
        try:
            reply = self.answer(message)
        except Exception as err:  # a ClientApp exception reaches the server as an Error
            reply = Message(FlowerError(code=0, reason=repr(err)), reply_to=message)
        if reply is not None:
            self._replies[message_id] = reply

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies that have arrived."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> list[Message]:
        """Push, wait for every handler (up to ``timeout`` each), pull."""
        ids = self.push_messages(messages)
        for i in ids:
            self._threads[i].join(timeout)
        return self.pull_messages(ids)


class LoopbackGrid(ThreadedGrid):
    """The Grid calls a strategy makes, answered by in-process devices.

    Parameters
    ----------
    num_devices : int
        Devices ``0..n-1`` (node ids ``1..n``), each its own built-in partition.
    cache_root : Path
        Each device keeps its provisioned assets under ``cache_root/partition-<i>``.
    """

    def __init__(self, num_devices: int, cache_root: Path) -> None:
        super().__init__()
        # Inside a ServerApp Flower sets the run's identity that new messages carry.
        for name in ("run_id", "node_id", "task_id"):
            try:
                getattr(TaskIdentity, name)
            except RuntimeError:
                setattr(TaskIdentity, name, 1 if name != "node_id" else 0)
        self.contexts = {
            i + 1: Context(
                run_id=1,
                node_id=i + 1,
                node_config={
                    "partition-id": i,
                    "num-partitions": num_devices,
                    "cache-dir": str(cache_root / f"partition-{i}"),
                    "energy-meter": "none",
                },
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_devices)
        }
        self.log: list[Exchange] = []

    def get_node_ids(self) -> Iterable[int]:
        """Every device's node id."""
        return list(self.contexts)

    def answer(self, message: Message) -> Message | None:
        """Run the device's real handler for ``message``; record the exchange."""
        context = self.contexts[message.metadata.dst_node_id]
        reply: Message | None = None
        try:
            reply = HANDLERS[message.metadata.message_type](message, context)
        finally:
            self.log.append(Exchange(message, reply))
        return reply

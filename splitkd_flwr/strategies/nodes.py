"""The server's view of its devices: waiting for them, profiling, provisioning."""

from __future__ import annotations

import time
from dataclasses import dataclass
from logging import WARNING

from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from splitkd_flwr import protocol
from splitkd_flwr.assets import DeviceAssets
from splitkd_flwr.errors import RoundFailedError
from splitkd_flwr.strategies.types import DeviceState


def wait_for_nodes(
    grid: Grid, min_nodes: int, timeout_s: float, poll_s: float = 1.0
) -> None:
    """Block until at least ``min_nodes`` nodes are connected; raise after ``timeout_s``.

    The Grid can be empty when a run starts: SuperNodes connect when they are ready.
    """
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise RoundFailedError(
                f"fewer than min-nodes={min_nodes} devices connected within {timeout_s:.0f} s"
            )
        time.sleep(poll_s)


@dataclass
class _Node:
    state: DeviceState
    assets_key: str


class NodeRegistry:
    """The devices the server knows: who they are (``query.profile``) and whether they hold
    the current assets (``query.provision`` sends them once)."""

    def __init__(self, assets: DeviceAssets) -> None:
        self.assets = assets
        self._nodes: dict[int, _Node] = {}

    def ready(self) -> list[DeviceState]:
        """Connected devices holding the current assets, in node-id order."""
        return [
            node.state
            for _, node in sorted(self._nodes.items())
            if node.assets_key == self.assets.key
        ]

    def refresh(self, grid: Grid, timeout_s: float) -> None:
        """Forget gone nodes, profile new ones, provision those lacking the assets."""
        node_ids = set(grid.get_node_ids())
        for gone in set(self._nodes) - node_ids:
            log(WARNING, "node %s left the federation", gone)
            del self._nodes[gone]
        new = sorted(node_ids - set(self._nodes))
        if new:
            self._profile(grid, new, timeout_s)
        stale = [
            n for n, node in self._nodes.items() if node.assets_key != self.assets.key
        ]
        if stale:
            self._provision(grid, stale, timeout_s)

    def _profile(self, grid: Grid, node_ids: list[int], timeout_s: float) -> None:
        queries = [
            Message(RecordDict(), dst_node_id=n, message_type=protocol.QUERY_PROFILE)
            for n in node_ids
        ]
        for reply in grid.send_and_receive(queries, timeout=timeout_s):
            node_id = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise ValueError(reply.error.reason)
                profile = reply.content[protocol.PROFILE]
                state = DeviceState(
                    node_id=node_id,
                    partition_id=int(profile["partition-id"]),
                    profile_name=str(profile["device"]),
                )
                self._nodes[node_id] = _Node(state, str(profile["assets-key"]))
            except (KeyError, TypeError, ValueError) as err:
                # Asked again at the next refresh; one bad node never stops the run.
                log(WARNING, "node %s gave no usable profile: %s", node_id, err)

    def _provision(self, grid: Grid, node_ids: list[int], timeout_s: float) -> None:
        content = RecordDict(
            {
                protocol.ASSETS: self.assets.config,
                protocol.TEACHER_EMBEDDING: self.assets.teacher_embedding,
            }
        )
        messages = [
            Message(content, dst_node_id=n, message_type=protocol.QUERY_PROVISION)
            for n in node_ids
        ]
        for reply in grid.send_and_receive(messages, timeout=timeout_s):
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                log(
                    WARNING,
                    "provisioning node %s failed: %s",
                    node_id,
                    reply.error.reason,
                )
                self._nodes.pop(node_id, None)  # profiled and provisioned afresh later
            else:
                self._nodes[node_id].assets_key = self.assets.key

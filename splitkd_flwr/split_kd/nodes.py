"""The split-KD server's devices: who they are and whether they hold the current assets."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from splitkd_flwr.core.types import DeviceState
from splitkd_flwr.flower.nodes import query_profiles
from splitkd_flwr.split_kd import protocol
from splitkd_flwr.split_kd.assets import DeviceAssets

logger = logging.getLogger(__name__)


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
        # devices provisioned so far (a round's metrics report the ones it provisioned)
        self.provisioned = 0

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
            logger.warning("node %s left the federation", gone)
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
        for node_id, profile in query_profiles(grid, node_ids, timeout_s).items():
            try:
                state = DeviceState(
                    node_id=node_id,
                    partition_id=int(profile["partition-id"]),
                    profile_name=str(profile["device"]),
                    energy_budget_j=(
                        float(profile["energy-budget-j"])  # type: ignore[arg-type]
                        if "energy-budget-j" in profile
                        else None
                    ),
                )
                self._nodes[node_id] = _Node(state, str(profile["assets-key"]))
            except (KeyError, TypeError, ValueError) as err:
                # Asked again at the next refresh; one bad node never stops the run.
                logger.warning("node %s gave no usable profile: %s", node_id, err)

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
                logger.warning(
                    "provisioning node %s failed: %s", node_id, reply.error.reason
                )
                self._nodes.pop(node_id, None)  # profiled and provisioned afresh later
            else:
                self._nodes[node_id].assets_key = self.assets.key
                self.provisioned += 1

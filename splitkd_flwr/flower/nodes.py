"""The server's view of its nodes, shared by both modes: waiting for them, asking who they are."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from splitkd_flwr.core.errors import RoundFailedError
from splitkd_flwr.flower.protocol import PROFILE, QUERY_PROFILE

logger = logging.getLogger(__name__)


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


def query_profiles(
    grid: Grid, node_ids: Iterable[int], timeout_s: float
) -> dict[int, ConfigRecord]:
    """Ask ``node_ids`` who they are (``query.profile``); a node that fails is left out.

    A node left out is asked again at the next refresh: one bad node never stops a run.
    """
    queries = [
        Message(RecordDict(), dst_node_id=n, message_type=QUERY_PROFILE)
        for n in node_ids
    ]
    profiles: dict[int, ConfigRecord] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout_s) if queries else []:
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            logger.warning("node %s gave no profile: %s", node_id, reply.error.reason)
            continue
        try:
            profiles[node_id] = reply.content[PROFILE]  # type: ignore[assignment]
        except KeyError:
            logger.warning("node %s replied without a %r record", node_id, PROFILE)
    return profiles

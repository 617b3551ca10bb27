"""Waiting for devices: the Grid can be empty when a run starts."""

from __future__ import annotations

import time

from flwr.serverapp import Grid

from splitkd_flwr.errors import RoundFailedError


def wait_for_nodes(
    grid: Grid, min_nodes: int, timeout_s: float, poll_s: float = 1.0
) -> None:
    """Block until at least ``min_nodes`` nodes are connected; raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise RoundFailedError(
                f"fewer than min-nodes={min_nodes} devices connected within {timeout_s:.0f} s"
            )
        time.sleep(poll_s)

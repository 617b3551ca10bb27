"""Clustered rounds: which K devices train together, and the cut and server clock of their round.

A pass over the fleet is a sequence of cluster rounds (CPSL: parallel inside a cluster,
sequential across clusters). A :class:`ClusterSelector` partitions the fleet into clusters of
``cluster_size``; a :class:`ClusterPlanner` picks one cut for the whole cluster (the server-side
student is shared, so every device of the round cuts at the same layer) and the server clock.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from splitkd_flwr.core.components import load_component
from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState, Workload
from splitkd_flwr.simulation.channel import LinkConfig
from splitkd_flwr.simulation.cluster_cost import ClusterCost, ClusterCostModel
from splitkd_flwr.simulation.cost import CostModel, compute_delay_s
from splitkd_flwr.simulation.devices import Fleet, load_fleet
from splitkd_flwr.simulation.planning import Plan

logger = logging.getLogger(__name__)

CLUSTER_METHODS = ("energy-optimal", "least-delay", "server-only", "device-only")


class ClusterPlanner:
    """One cut per cluster and the server clock, priced by :class:`ClusterCostModel`.

    ``method``:

    - ``energy-optimal``: minimum round energy over every (cut, clock step) with delay
      <= the bound; exhaustive over the (C, F) grid, so exact for the model. When no plan
      meets the bound, the least-delay plan is returned with ``feasible=False``.
    - ``least-delay``: the least delay (top clock; ties to the lower cut).
    - ``server-only`` / ``device-only``: cut 1 / L-1 at the top clock.

    Parameters
    ----------
    workload : Workload
        One device's round (batches per round = local steps of the cluster round).
    delay_bound_s : float, optional
        Bound on the cluster round's delay (None: none); :meth:`plan` may override it.
    fleet : Fleet | str | Path | None
        Profiles and the server (None: the paper's Table II fleet).
    link : LinkConfig, optional
        The shared carrier (default :class:`LinkConfig`).
    """

    def __init__(
        self,
        workload: Workload,
        delay_bound_s: float | None = None,
        *,
        method: str = "energy-optimal",
        fleet: Fleet | str | Path | None = None,
        link: LinkConfig | None = None,
        attention_factor: float = 1.0,
    ) -> None:
        if method not in CLUSTER_METHODS:
            raise ConfigError(
                f"cluster planner method must be one of {CLUSTER_METHODS}, got {method!r}"
            )
        if delay_bound_s is not None and not delay_bound_s > 0:
            raise ConfigError(
                f"delay-bound-s must be > 0 or unset, got {delay_bound_s}"
            )
        self.workload, self.method, self.delay_bound_s = workload, method, delay_bound_s
        self.fleet = fleet if isinstance(fleet, Fleet) else load_fleet(fleet)
        self.server = self.fleet.server_profile
        self.model = ClusterCostModel(
            CostModel(workload, self.server, attention_factor),
            self.fleet,
            link or LinkConfig(),
        )

    def evaluate(self, cluster: Sequence[DeviceState]) -> ClusterCost:
        """The cluster round's cost at every cut and clock step."""
        return self.model.evaluate(cluster)

    def least_delay_s(self, cluster: Sequence[DeviceState]) -> float:
        """The least delay any (cut, clock) gives this cluster's round."""
        return float(self.evaluate(cluster).delay_s.min())

    def plan(
        self,
        cluster: Sequence[DeviceState],
        server_round: int = 0,
        delay_bound_s: float | None = None,
        cost: ClusterCost | None = None,
    ) -> Plan:
        """The plan for a round of ``cluster``; ``delay_bound_s`` overrides the planner's,
        ``cost`` is the cluster's :meth:`evaluate` when already at hand."""
        cost = self.evaluate(cluster) if cost is None else cost
        top = len(cost.clocks_hz) - 1
        layers = self.workload.num_student_layers
        if self.method == "server-only":
            return self._plan(cost, 0, top, True)
        if self.method == "device-only":
            return self._plan(cost, layers - 2, top, True)
        # least delay: the top clock is the fastest for every cut; ties to the lower cut
        fastest = int(np.argmin(cost.delay_s[:, top]))
        if self.method == "least-delay":
            return self._plan(cost, fastest, top, True)
        bound = self.delay_bound_s if delay_bound_s is None else delay_bound_s
        bound = math.inf if bound is None else bound
        energy = np.where(cost.delay_s <= bound, cost.energy_j, np.inf)
        best = int(np.argmin(energy))
        if np.isfinite(energy.flat[best]):
            cut_index, clock_index = np.unravel_index(best, energy.shape)
            return self._plan(cost, int(cut_index), int(clock_index), True)
        logger.warning(
            "round %s: no plan for cluster %s meets the delay bound %.3g s; least delay "
            "%.3g s at cut %s",
            server_round,
            [d.node_id for d in cluster],
            bound,
            cost.delay_s[fastest, top],
            fastest + 1,
        )
        return self._plan(cost, fastest, top, False)

    def _plan(
        self, cost: ClusterCost, cut_index: int, clock_index: int, feasible: bool
    ) -> Plan:
        modelled = cost.record(cut_index, clock_index)
        return Plan(
            int(cost.cuts[cut_index]), modelled["server_clock_hz"], feasible, modelled
        )


def _by_id(device: DeviceState) -> tuple[int, int]:
    return (device.partition_id, device.node_id)


class ClusterSelector(ABC):
    """Partition the fleet into clusters of ``cluster_size``; one cluster trains per round.

    Subclass it and name it in the run config (``cluster-selector =
    "mypkg.mymod:MyClustering"``); it is built as ``MyClustering(cluster_size, seed=...,
    model=...)`` where ``model`` is a :class:`ClusterCostModel` or None (no modelled world).
    The partition is formed at the first round of each pass over the fleet and kept for the
    pass, so every device trains once per pass.
    """

    def __init__(
        self,
        cluster_size: int,
        seed: int = 0,
        model: ClusterCostModel | None = None,
    ) -> None:
        if cluster_size < 1:
            raise ConfigError(f"cluster-size must be >= 1, got {cluster_size}")
        self.cluster_size, self.seed, self.model = cluster_size, seed, model
        self._pass: tuple[int, tuple[int, ...]] | None = None
        self._groups: list[list[int]] = []

    @abstractmethod
    def clusters(
        self, devices: Sequence[DeviceState], server_round: int
    ) -> list[list[DeviceState]]:
        """A partition of ``devices`` into clusters of at most ``cluster_size``, in turn order."""

    def num_clusters(self, num_devices: int) -> int:
        """Clusters per pass over ``num_devices`` devices."""
        return math.ceil(num_devices / self.cluster_size)

    def select(
        self, devices: Sequence[DeviceState], server_round: int
    ) -> list[DeviceState]:
        """The cluster that trains in ``server_round`` (current states of its devices)."""
        if not devices:
            raise ConfigError("no devices to cluster")
        n = self.num_clusters(len(devices))
        start = server_round - (server_round - 1) % n
        ids = tuple(sorted(d.node_id for d in devices))
        if self._pass != (start, ids):
            groups = self.clusters(devices, start)
            self._groups = [[d.node_id for d in g] for g in groups]
            self._pass = (start, ids)
        by_node = {d.node_id: d for d in devices}
        return [by_node[i] for i in self._groups[(server_round - start) % n]]


def _chunks(ordered: Sequence[DeviceState], size: int) -> list[list[DeviceState]]:
    return [list(ordered[i : i + size]) for i in range(0, len(ordered), size)]


class InOrder(ClusterSelector):
    """Consecutive partition ids: {0..K-1}, {K..2K-1}, ... (K = 1: round-robin)."""

    def clusters(
        self, devices: Sequence[DeviceState], server_round: int
    ) -> list[list[DeviceState]]:
        """Chunks of the devices in partition-id order."""
        return _chunks(sorted(devices, key=_by_id), self.cluster_size)


class RandomClusters(ClusterSelector):
    """A seeded random partition per pass (the draw depends only on seed and pass start)."""

    def clusters(
        self, devices: Sequence[DeviceState], server_round: int
    ) -> list[list[DeviceState]]:
        """Chunks of a seeded permutation."""
        ordered = sorted(devices, key=_by_id)
        rng = np.random.default_rng([self.seed, server_round])
        return _chunks(
            [ordered[i] for i in rng.permutation(len(ordered))], self.cluster_size
        )


class BySpeed(ClusterSelector):
    """CPSL-style: devices of similar speed train together, so no cluster waits on a straggler.

    A device's speed is its modelled local time of one step at cut 1 (forward + backward of one
    student layer, smashed data up and gradient down at its share ``1/K`` of the carrier);
    devices are sorted by it and cut into consecutive clusters, fastest first. Without a
    modelled world (``model`` None or no link rates) the sort key is compute time alone, and
    without profiles the partition order.
    """

    def clusters(
        self, devices: Sequence[DeviceState], server_round: int
    ) -> list[list[DeviceState]]:
        """Chunks of the devices sorted by modelled local step time."""
        ordered = sorted(devices, key=_by_id)
        if self.model is None:
            return _chunks(ordered, self.cluster_size)
        model = self.model
        profiles = [model.fleet.profile(d.profile_name) for d in ordered]
        local_s = np.array(
            [
                compute_delay_s(model.step_flops[0], p.clock_hz, p.cores, p.utilisation)
                for p in profiles
            ]
        )
        if all(d.snr_db is not None and d.uplink_bps for d in ordered):
            up, down = model.links(ordered, 1.0 / min(self.cluster_size, len(ordered)))
            local_s = local_s + 8 * (
                model.frame_up_bytes[0] / up + model.frame_down_bytes[0] / down
            )
        order = np.argsort(local_s, kind="stable")
        return _chunks([ordered[i] for i in order], self.cluster_size)


CLUSTER_SELECTORS: dict[str, type[ClusterSelector]] = {
    "by-speed": BySpeed,
    "in-order": InOrder,
    "random": RandomClusters,
}


def load_cluster_selector(
    spec: str, cluster_size: int, seed: int = 0, **options: Any
) -> ClusterSelector:
    """Build a cluster selector from a registered name or a dotted path."""
    return load_component(
        spec, ClusterSelector, CLUSTER_SELECTORS, cluster_size, seed=seed, **options
    )

"""ClusterSplitKD: K devices per round, in parallel, sharing the server (CPSL inside a cluster).

A round: the cluster selector picks K devices, the cluster planner one cut (and clock) for
all of them, every member gets its ``train`` message at once and streams on its own token;
the server steps each member's frames on that member's copy of the server side (SFLv1, see
:mod:`splitkd_flwr.split.cluster`), batching the teacher over frames that wait together.
At the end the members that finished cleanly are averaged by tokens into the global
student; a member whose stream, reply or weights fail is dropped, exactly (its copy and
weights never enter the average), and the record names it. Only when every member fails is
the round rolled back. The devices' side is today's ``train`` handler, unchanged.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from splitkd_flwr.core.errors import ConfigError, RoundFailedError, SplitKDError
from splitkd_flwr.core.types import DeviceState
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.loop import TrainRound
from splitkd_flwr.simulation.cluster_planning import (
    ClusterPlanner,
    ClusterSelector,
    load_cluster_selector,
)
from splitkd_flwr.simulation.planning import Plan
from splitkd_flwr.split.cluster import ClusterServer
from splitkd_flwr.split_kd import protocol
from splitkd_flwr.split_kd.cluster_dataplane import ClusterStreams, open_cluster
from splitkd_flwr.split_kd.strategy import SplitKD, token_weighted_mean
from splitkd_flwr.split_kd.workspace import Workspace

logger = logging.getLogger(__name__)

_POLL_S = 0.05
# Planners a cluster round can use: their cluster-round counterparts (the cut is shared).
CLUSTER_METHOD_OF = {
    "energy-optimal": "energy-optimal",
    "server-only": "server-only",
    "device-only": "device-only",
}


@dataclass
class ClusterRound(TrainRound):
    """An open cluster round: its members, their shared plan, their streams."""

    devices: list[DeviceState] = field(default_factory=list)
    plan: Plan | None = None
    streams: ClusterStreams | None = None


class ClusterSplitKD(SplitKD):
    """Split KD with a cluster of devices per round (``cluster-size`` > 1).

    Parameters (beyond :class:`SplitKD`'s)
    --------------------------------------
    cluster_selector : ClusterSelector
        Which devices train together this round.
    cluster_planner : ClusterPlanner | None
        The cut and clock of the cluster round; None: the ``fixed`` planner's cut for all.
    """

    server: ClusterServer

    def __init__(
        self,
        *args: Any,
        cluster_selector: ClusterSelector,
        cluster_planner: ClusterPlanner | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.cluster_selector = cluster_selector
        self.cluster_planner = cluster_planner

    def configure_train(self, server_round: int, grid: Grid) -> ClusterRound:
        """Select a cluster, plan its cut, open one stream per member, build K messages."""
        cluster = self.cluster_selector.select(
            self.candidates(server_round), server_round
        )
        plan = self._plan(cluster, server_round)
        if plan.server_clock_hz is not None:
            self.monitor.apply_clock(plan.server_clock_hz)
        tokens = {d.node_id: secrets.token_urlsafe(24) for d in cluster}
        streams = open_cluster(
            self.data_plane,
            tokens,
            self.server,
            plan.cut_layer,
            self.monitor,
            max_batch=self.config.batch_size,
            max_seq_len=self.config.seq_len,
        )
        weights = ArrayRecord(self.server.device_state(plan.cut_layer))
        messages = [
            Message(
                RecordDict(
                    {
                        protocol.PLAN: self._round_plan(
                            server_round, plan.cut_layer, tokens[d.node_id]
                        ).to_record(),
                        protocol.DEVICE_WEIGHTS: weights,
                    }
                ),
                dst_node_id=d.node_id,
                message_type=protocol.TRAIN,
            )
            for d in cluster
        ]
        return ClusterRound(
            server_round,
            messages,
            _describe(cluster, plan),
            devices=list(cluster),
            plan=plan,
            streams=streams,
        )

    def _plan(self, cluster: Sequence[DeviceState], server_round: int) -> Plan:
        if self.cluster_planner is None:
            return Plan(cut_layer=self.config.cut_layer)
        return self.cluster_planner.plan(cluster, server_round)

    def collect_replies(
        self, grid: Grid, train_round: TrainRound, timeout_s: float
    ) -> list[Message]:
        """Wait until every member has replied or its stream has failed (or the timeout)."""
        assert isinstance(train_round, ClusterRound) and train_round.streams is not None
        streams = train_round.streams
        ids = dict(
            zip(
                grid.push_messages(train_round.messages),
                (d.node_id for d in train_round.devices),
            )
        )
        replies: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while ids and time.monotonic() < deadline:
            for reply in grid.pull_messages(list(ids)):
                ids = {i: n for i, n in ids.items() if n != reply.metadata.src_node_id}
                replies.append(reply)
            # a member whose stream failed is dropped; its reply (if any) is not awaited
            ids = {i: n for i, n in ids.items() if not streams.failed(n)}
            if ids:
                time.sleep(_POLL_S)
        return replies

    def aggregate_train(
        self, train_round: TrainRound, replies: list[Message]
    ) -> dict[str, Any]:
        """Commit the members that finished cleanly (token-weighted); drop the others."""
        assert isinstance(train_round, ClusterRound) and train_round.streams is not None
        by_node = {r.metadata.src_node_id: r for r in replies}
        kept: dict[int, tuple[Mapping[str, Any], float]] = {}
        figures: dict[int, dict[str, Any]] = {}
        dropped: dict[int, str] = {}
        try:
            for device in train_round.devices:
                node = device.node_id
                try:
                    stats = train_round.streams.streams[node].finish()
                    weights, device_metrics = _reply_of(by_node.get(node))
                    self.server.check_device_weights(weights)
                except (SplitKDError, KeyError, TypeError, ValueError) as err:
                    dropped[node] = f"{type(err).__name__}: {err}"
                    logger.warning(
                        "round %s: node %s dropped from its cluster: %s",
                        train_round.server_round,
                        node,
                        dropped[node],
                    )
                    continue
                kept[node] = (weights, float(stats["tokens"]))
                figures[node] = {**device_metrics, **stats}
            if not kept:
                raise RoundFailedError(f"every member of the cluster failed: {dropped}")
            self.server.commit(kept)
        finally:
            train_round.streams.close()
        for device in train_round.devices:
            if device.node_id in kept:
                self._charge_member(device, train_round.plan, len(train_round.devices))
        return self._figures(train_round, figures, dropped)

    def _figures(
        self,
        train_round: ClusterRound,
        figures: Mapping[int, Mapping[str, Any]],
        dropped: Mapping[int, str],
    ) -> dict[str, Any]:
        partition = {d.node_id: d.partition_id for d in train_round.devices}
        mean = token_weighted_mean(list(figures.values())) or {}
        summed = {
            key: sum(float(f.get(key, 0.0)) for f in figures.values())
            for key in (
                "batches",
                "tokens",
                "measured-bytes-up",
                "measured-bytes-down",
                "measured-server-compute-s",
            )
        }
        batching = train_round.streams.batcher.stats if train_round.streams else None
        out: dict[str, Any] = {
            **{k: v for k, v in mean.items() if k not in summed},
            **summed,
            "cluster-kept": " ".join(str(partition[n]) for n in figures),
            "cluster-dropped": " ".join(str(partition[n]) for n in dropped),
            "cluster-dropped-errors": "; ".join(dropped.values()),
        }
        if batching is not None:
            out["server-steps"] = batching.steps
            out["server-frames-per-step-max"] = batching.largest
        return out

    def abort_train(self, train_round: TrainRound | None) -> None:
        """Close every member's stream; the global student was never touched."""
        if isinstance(train_round, ClusterRound) and train_round.streams is not None:
            train_round.streams.close()
        self.server.rollback()

    def _charge_member(self, device: DeviceState, plan: Plan | None, k: int) -> None:
        """Book a member's share of the round's modelled device energy."""
        used, rounds = self.usage.get(device.node_id, (0.0, 0))
        spent = (plan.modelled.get("device_j", 0.0) if plan else 0.0) / k
        self.usage[device.node_id] = (used + spent, rounds + 1)


def _reply_of(reply: Message | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A member's updated weights and metrics; raises if it did not reply cleanly."""
    if reply is None:
        raise RoundFailedError("the device did not reply")
    if reply.has_error():
        raise RoundFailedError(f"the device reported: {reply.error.reason}")
    weights = reply.content[protocol.DEVICE_WEIGHTS].to_torch_state_dict()
    return weights, dict(reply.content[protocol.METRICS])


def _describe(cluster: Sequence[DeviceState], plan: Plan) -> dict[str, Any]:
    described: dict[str, Any] = {
        "node": " ".join(str(d.node_id) for d in cluster),
        "partition-id": " ".join(str(d.partition_id) for d in cluster),
        "device": " ".join(d.profile_name for d in cluster),
        "cluster-size": len(cluster),
        "cut-layer": plan.cut_layer,
        "plan-feasible": plan.feasible,
        **{f"modelled-{k.replace('_', '-')}": v for k, v in plan.modelled.items()},
    }
    if plan.server_clock_hz is not None:
        described["planned-server-clock-hz"] = plan.server_clock_hz
    return described


def cluster_parts(config: RunConfig, workspace: Workspace) -> dict[str, Any]:
    """The cluster selector and planner of a run with ``cluster-size`` > 1.

    The run's ``planner`` maps to its cluster-round counterpart (one cut for the cluster);
    ``fixed`` keeps ``cut-layer`` for every cluster. Custom planners plan one device and
    are refused here rather than guessed at.
    """
    scenario = workspace.scenario()
    if config.planner != "fixed" and config.planner not in CLUSTER_METHOD_OF:
        raise ConfigError(
            "cluster-size > 1 plans one cut for the whole cluster: planner must be one of "
            f"{sorted([*CLUSTER_METHOD_OF, 'fixed'])}, got {config.planner!r}"
        )
    planner = None
    if config.planner != "fixed":
        if scenario is None:
            raise ConfigError(
                f"planner {config.planner!r} needs the modelled world (scenario = 'paper'); "
                "use planner = 'fixed' with scenario = 'none'"
            )
        planner = ClusterPlanner(
            workspace.workload(),
            config.delay_bound_s or None,
            method=CLUSTER_METHOD_OF[config.planner],
            fleet=scenario.fleet,
            link=scenario.link_config,
        )
    selector = load_cluster_selector(
        config.cluster_selector,
        config.cluster_size,
        seed=config.seed,
        model=planner.model if planner is not None else None,
    )
    return {"cluster_selector": selector, "cluster_planner": planner}

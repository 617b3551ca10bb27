"""SplitKD: one device per round (select -> plan -> stream -> commit or roll back)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from transformers import PreTrainedTokenizerBase

from splitkd_flwr.core.errors import RoundFailedError, SplitKDError
from splitkd_flwr.core.types import DeviceState
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.loop import RoundStrategy, TrainRound
from splitkd_flwr.hardware.monitor import HardwareMonitor
from splitkd_flwr.simulation.planning import Plan, Planner
from splitkd_flwr.simulation.selection import Selector
from splitkd_flwr.split.server import SplitServer, load_server_state, server_state
from splitkd_flwr.split_kd import protocol
from splitkd_flwr.split_kd.arrays import from_record, state_bytes, to_record
from splitkd_flwr.split_kd.assets import DeviceAssets
from splitkd_flwr.split_kd.dataplane import DataPlane, RoundInProgress
from splitkd_flwr.split_kd.nodes import NodeRegistry
from splitkd_flwr.split_kd.private_layers import check_plan_cut, write_private_note

logger = logging.getLogger(__name__)

# How often the loop checks for the device's reply while a round streams.
_POLL_S = 0.05

# Fills in a device's modelled link for a round.
LinkFn = Callable[[DeviceState, int], DeviceState]
EvalFn = Callable[[], dict[str, float]]


@dataclass
class SplitRound(TrainRound):
    """An open split round: the device, its plan and its data-plane stream."""

    device: DeviceState | None = None
    plan: Plan | None = None
    stream: RoundInProgress | None = None


class SplitKD(RoundStrategy):
    """Split knowledge distillation with ONE device per round.

    Contract with the ClientApp (record keys in :mod:`splitkd_flwr.split_kd.protocol`):

    - ``query.profile`` -> the device answers ``profile`` {``partition-id``, ``device``,
      ``assets-key``}; ``query.provision`` sends ``assets`` + ``teacher-embedding`` to a device
      whose ``assets-key`` differs from the server's.
    - ``train`` carries ``plan`` (a :class:`~splitkd_flwr.split_kd.protocol.RoundPlan`) and
      ``device-weights`` (student tensors of the layers below the cut, embeddings included;
      with ``lora-rank`` > 0 only their LoRA adapters, the frozen base having been
      provisioned). Round metrics ``weights-bytes-down`` / ``weights-bytes-up`` count them.
      Inside its handler the device streams one frame per mini-batch to the data plane
      (``plan.address``, ``plan.token``) and finally replies ``device-weights`` (updated) and
      ``metrics``.
    - ``evaluate`` (once, after the last round) carries ``student``, the whole distilled
      student, which the device keeps; it replies ``metrics`` on its own data.

    A round whose stream fails, whose reply is an error or carries bad weights is rolled
    back: the global student and the server optimizer are exactly as before the round.
    The cut of the open round has one owner, the :class:`SplitServer`.
    """

    failed_status = "rolled-back"

    def __init__(
        self,
        config: RunConfig,
        server: SplitServer,
        data_plane: DataPlane,
        selector: Selector,
        planner: Planner,
        assets: DeviceAssets,
        evaluate_fn: EvalFn,
        tokenizer: PreTrainedTokenizerBase | None = None,
        teacher_perplexity: float | None = None,
        link_fn: LinkFn | None = None,
        monitor: HardwareMonitor | None = None,
    ) -> None:
        self.config = config
        self.server = server
        self.data_plane = data_plane
        self.selector = selector
        self.planner = planner
        self.evaluate_fn = evaluate_fn
        self.tokenizer = tokenizer
        self.teacher_perplexity = teacher_perplexity
        self.link_fn = link_fn
        self.monitor = monitor or HardwareMonitor.from_config("none", "none")
        self.nodes = NodeRegistry(assets)
        self._provisioned_reported = 0
        # node -> (modelled device J, rounds): what energy-aware selectors read.
        self.usage: dict[int, tuple[float, int]] = {}
        # Nodes that committed a round of this Flower run, so keep their own private
        # layers (never checkpointed: a resumed run is a new run, its devices start over).
        self._holds_private: set[int] = set()
        # partition id -> usage from a checkpoint, moved into usage when the node shows.
        self._restored_usage: dict[int, tuple[float, int]] = {}
        logger.info(
            "SplitKD: selector=%s planner=%s, data plane %s, wire %s",
            config.selector,
            config.planner,
            data_plane.address,
            config.wire_dtype,
        )

    def refresh_nodes(self, grid: Grid, timeout_s: float) -> None:
        """Profile new devices and provision those lacking the current assets."""
        self.nodes.refresh(grid, timeout_s)

    def candidates(self, server_round: int) -> list[DeviceState]:
        """The provisioned devices with their usage and (modelled) links this round."""
        for d in self.nodes.ready():
            if d.partition_id in self._restored_usage and d.node_id not in self.usage:
                self.usage[d.node_id] = self._restored_usage.pop(d.partition_id)
        devices = [
            replace(d, energy_used_j=used, rounds_trained=rounds)
            for d in self.nodes.ready()
            for used, rounds in [self.usage.get(d.node_id, (0.0, 0))]
        ]
        if not devices:
            raise RoundFailedError("no provisioned device is connected")
        if self.link_fn is not None:
            devices = [self.link_fn(d, server_round) for d in devices]
        return devices

    def configure_train(self, server_round: int, grid: Grid) -> SplitRound:
        """Select one device, plan its cut, open its data-plane round, build its message."""
        device = self.selector.select(self.candidates(server_round), server_round)
        plan = self.planner.plan(device, server_round)
        check_plan_cut(
            plan.cut_layer, self.config.device_private_layers, self.config.planner
        )
        if plan.server_clock_hz is not None:
            self.monitor.apply_clock(plan.server_clock_hz)
        token = secrets.token_urlsafe(24)
        stream = self.data_plane.open_round(
            token,
            self.server,
            plan.cut_layer,
            self.monitor,
            max_batch=self.config.batch_size,
            max_seq_len=self.config.seq_len,
        )
        round_plan = self._round_plan(server_round, plan.cut_layer, token)
        device_state = self.server.device_state(plan.cut_layer)
        content = RecordDict(
            {
                protocol.PLAN: round_plan.to_record(),
                protocol.DEVICE_WEIGHTS: to_record(device_state),
            }
        )
        if (
            self.config.device_private_layers
            and device.node_id not in self._holds_private
        ):
            # The initial weights only (the server never learns the trained ones), and
            # only until the device keeps its own: at real scale they hold the
            # embedding table (0.5 GB in bf16 for Llama-3.2-1B).
            private = self.server.private_state()
            content[protocol.PRIVATE_INIT] = to_record(private)
            device_state = {**device_state, **private}
        message = Message(
            content, dst_node_id=device.node_id, message_type=protocol.TRAIN
        )
        return SplitRound(
            server_round,
            [message],
            {
                **_describe(device, plan),
                "weights-bytes-down": state_bytes(device_state),
            },
            device=device,
            plan=plan,
            stream=stream,
        )

    def _round_plan(
        self, server_round: int, cut_layer: int, token: str
    ) -> protocol.RoundPlan:
        c = self.config
        return protocol.RoundPlan(
            server_round=server_round,
            cut_layer=cut_layer,
            local_epochs=c.local_epochs,
            max_batches_per_epoch=c.max_batches_per_epoch,
            batch_size=c.batch_size,
            seq_len=c.seq_len,
            device_lr=c.device_lr,
            wire_dtype=c.wire_dtype,
            address=self.data_plane.address,
            token=token,
            frame_timeout_s=c.frame_timeout_s,
            seed=c.seed + server_round,
            tls_root_cert=self.data_plane.root_cert_pem,
            train_precision=c.train_precision,
            gradient_checkpointing=c.gradient_checkpointing,
            lora_rank=c.lora_rank,
            lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout,
            lora_targets=c.lora_targets,
            split_mode=c.split_mode,
            kd_alpha=c.kd_alpha,
            kd_temperature=c.kd_temperature,
            kd_divergence=c.kd_divergence,
            kd_beta=c.kd_beta,
            smashed_noise=c.smashed_noise,
            device_private_layers=c.device_private_layers,
            private_init_noise=c.private_init_noise,
        )

    def collect_replies(
        self, grid: Grid, train_round: TrainRound, timeout_s: float
    ) -> list[Message]:
        """Wait for the device's reply, but give up as soon as its stream has failed."""
        assert isinstance(train_round, SplitRound) and train_round.stream is not None
        (message_id,) = grid.push_messages(train_round.messages)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            replies = list(grid.pull_messages([message_id]))
            if replies:
                return replies
            if train_round.stream.failed():
                return []  # aggregate_train reports the stream's error
            time.sleep(_POLL_S)
        return []

    def aggregate_train(
        self, train_round: TrainRound, replies: list[Message]
    ) -> dict[str, Any]:
        """Commit the device's weights if its stream and reply are sound; else raise."""
        assert isinstance(train_round, SplitRound) and train_round.stream is not None
        try:
            if (
                replies
                and replies[0].has_error()
                and not train_round.stream.connected()
            ):
                # The device failed before it opened the stream: its reason is the
                # round's, with no wait for a stream that will never come.
                raise RoundFailedError(
                    f"the device reported: {replies[0].error.reason}"
                )
            stats = train_round.stream.finish()
            if not replies:
                raise RoundFailedError("the device did not reply")
            reply = replies[0]
            if reply.has_error():
                raise RoundFailedError(f"the device reported: {reply.error.reason}")
            weights = from_record(reply.content[protocol.DEVICE_WEIGHTS])
            device_metrics = dict(reply.content[protocol.METRICS])
            self.server.commit(weights)
            device_metrics["weights-bytes-up"] = state_bytes(weights)
        except (SplitKDError, KeyError, TypeError, ValueError) as err:
            # A malformed reply (missing record, wrong types) is the device's fault, not
            # the run's: the loop rolls the round back and goes on.
            raise RoundFailedError(f"{type(err).__name__}: {err}") from err
        finally:
            train_round.stream.close()
        self._charge(train_round)
        if train_round.device is not None:
            self._holds_private.add(train_round.device.node_id)
        return {**device_metrics, **stats}

    def abort_train(self, train_round: TrainRound | None) -> None:
        """Close the data-plane round, if any, and restore the server's state before it."""
        if isinstance(train_round, SplitRound) and train_round.stream is not None:
            train_round.stream.close()
            # Whatever failed, the next round of this device carries private-init again
            # (a device that kept its layers ignores it).
            if train_round.device is not None:
                self._holds_private.discard(train_round.device.node_id)
        self.server.rollback()

    def _charge(self, train_round: SplitRound) -> None:
        """Book the round's modelled device energy (for energy-aware selectors)."""
        assert train_round.device is not None and train_round.plan is not None
        node_id = train_round.device.node_id
        used, rounds = self.usage.get(node_id, (0.0, 0))
        modelled = train_round.plan.modelled
        spent = modelled.get("device_compute_j", 0.0) + modelled.get("device_tx_j", 0.0)
        self.usage[node_id] = (used + spent, rounds + 1)

    def round_figures(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Measured server energy and clock, and the control plane's share of the round."""
        figures = dict(self.monitor.metrics())
        provisioned = self.nodes.provisioned - self._provisioned_reported
        if provisioned:
            # What provisioning sent each new device this round (once per device).
            figures["provisioned-devices"] = provisioned
            figures.update(self.nodes.assets.sizes_bytes)
            self._provisioned_reported = self.nodes.provisioned
        if "measured-device-round-s" in record:
            # What the round cost beyond the device's own handler: the Flower message
            # both ways (and, in simulation, scheduling the ClientApp actor).
            figures["measured-control-plane-s"] = (
                record["measured-round-s"] - record["measured-device-round-s"]
            )
        return figures

    def state_dict(self) -> dict[str, Any]:
        """The student, the server optimizer and the energy booked per device."""
        partition_of = {d.node_id: d.partition_id for d in self.nodes.ready()}
        # By partition id: a restarted federation gives its nodes new ids.
        usage = {str(pid): list(u) for pid, u in self._restored_usage.items()}
        usage.update(
            (str(partition_of[node]), [used, rounds])
            for node, (used, rounds) in self.usage.items()
            if node in partition_of
        )
        return {"server": server_state(self.server), "usage": usage}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (the usage once each device is seen)."""
        load_server_state(self.server, state["server"])
        self._restored_usage = {
            int(pid): (float(used), int(rounds))
            for pid, (used, rounds) in state["usage"].items()
        }

    def evaluate(self) -> dict[str, Any]:
        """The global student on the server's held-out batches."""
        return {f"eval-{k}": v for k, v in self.evaluate_fn().items()}

    def finish(
        self, grid: Grid, output_dir: Path, records: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Save the student, deploy it to every device, summarise the run."""
        student_dir = output_dir / "student"
        # Adapters merged: a plain checkpoint that loads without peft.
        self.server.student.save_pretrained(
            student_dir, state_dict=self.server.student_state()
        )
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(student_dir)
        if self.config.device_private_layers:
            write_private_note(student_dir, self.server.private_names())
        initial, final = records[0], records[-1]
        summary: dict[str, Any] = {
            "initial student perplexity": initial.get("eval-perplexity"),
            "final student perplexity": final.get("eval-perplexity"),
            "teacher perplexity": self.teacher_perplexity,
            "rounds ok / rolled back": "%d / %d"
            % (
                sum(r.get("status") == "ok" for r in records),
                sum(r.get("status") == self.failed_status for r in records),
            ),
            "student saved to": str(student_dir),
        }
        deployed = self.deploy(grid, self.config.round_timeout_s)
        if deployed is not None:
            summary["deployed student perplexity on devices"] = deployed["perplexity"]
        return summary

    def deploy(self, grid: Grid, timeout_s: float) -> dict[str, float] | None:
        """Send the whole student to every provisioned device; token-weighted metrics back."""
        eval_config = ConfigRecord(
            {"seq-len": self.config.seq_len, "batch-size": self.config.batch_size}
        )
        content = RecordDict(
            {
                protocol.STUDENT: to_record(self.server.student_state()),
                protocol.EVAL_CONFIG: eval_config,
            }
        )
        messages = [
            Message(content, dst_node_id=d.node_id, message_type=protocol.EVALUATE)
            for d in self.nodes.ready()
        ]
        if not messages:
            return None
        replies = grid.send_and_receive(messages, timeout=timeout_s)
        return token_weighted_mean(
            [r.content[protocol.METRICS] for r in replies if not r.has_error()]
        )


def token_weighted_mean(
    metrics: list[Mapping[str, Any]],
) -> dict[str, float] | None:
    """The devices' metrics averaged with their ``tokens`` as weights (None if no tokens)."""
    total = sum(float(m["tokens"]) for m in metrics)
    if total == 0:
        return None
    keys = [k for k in metrics[0] if k != "tokens"]
    mean = {
        k: sum(float(m[k]) * float(m["tokens"]) for m in metrics) / total for k in keys
    }
    return {**mean, "tokens": total, "devices": float(len(metrics))}


def _describe(device: DeviceState, plan: Plan) -> dict[str, Any]:
    described: dict[str, Any] = {
        "node": device.node_id,
        "partition-id": device.partition_id,
        "device": device.profile_name,
        "cut-layer": plan.cut_layer,
        "plan-feasible": plan.feasible,
        **{f"modelled-{k.replace('_', '-')}": v for k, v in plan.modelled.items()},
    }
    if plan.server_clock_hz is not None:
        described["planned-server-clock-hz"] = plan.server_clock_hz
    if device.uplink_bps is not None:
        described["modelled-uplink-bps"] = device.uplink_bps
    return described

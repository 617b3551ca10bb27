"""SplitKD: the server's round loop (select -> plan -> train -> commit/rollback -> evaluate)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from splitkd_flwr import protocol
from splitkd_flwr.assets import DeviceAssets
from splitkd_flwr.config import RunConfig
from splitkd_flwr.dataplane import DataPlane, RoundInProgress
from splitkd_flwr.errors import RoundFailedError, SplitKDError
from splitkd_flwr.hardware.monitor import HardwareMonitor
from splitkd_flwr.report import MetricsLog
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.strategies.nodes import NodeRegistry
from splitkd_flwr.strategies.planning import Plan, Planner
from splitkd_flwr.strategies.selection import Selector
from splitkd_flwr.strategies.types import DeviceState

_POLL_S = 0.05  # how often the loop checks for the device's reply while a round streams

LinkFn = Callable[
    [DeviceState, int], DeviceState
]  # fills in a device's link for a round
EvalFn = Callable[[], dict[str, float]]


class SplitKD(Strategy):
    """Split knowledge distillation with ONE device per round.

    Contract with the ClientApp (record keys in :mod:`splitkd_flwr.protocol`):

    - ``query.profile`` -> the device answers ``profile`` {``partition-id``, ``device``,
      ``assets-key``}; ``query.provision`` sends ``assets`` + ``teacher-embedding`` to a device
      whose ``assets-key`` differs from the server's.
    - ``train`` carries ``plan`` (a :class:`~splitkd_flwr.protocol.RoundPlan`) and
      ``device-weights`` (student tensors of the layers below the cut, embeddings included).
      Inside its handler the device streams one frame per mini-batch to the data plane
      (``plan.address``, ``plan.token``) and finally replies ``device-weights`` (updated) and
      ``metrics``.
    - ``evaluate`` (once, after the last round) carries ``student``, the whole distilled
      student, which the device keeps; it replies ``metrics`` on its own data.

    A round whose stream fails, whose reply is an error or carries bad weights is rolled
    back: the global student and the server optimizer are exactly as before the round.
    """

    def __init__(
        self,
        config: RunConfig,
        server: SplitServer,
        data_plane: DataPlane,
        selector: Selector,
        planner: Planner,
        assets: DeviceAssets,
        metrics_log: MetricsLog,
        evaluate_fn: EvalFn,
        link_fn: LinkFn | None = None,
        monitor: HardwareMonitor | None = None,
    ) -> None:
        self.config = config
        self.server = server
        self.data_plane = data_plane
        self.selector = selector
        self.planner = planner
        self.metrics_log = metrics_log
        self.evaluate_fn = evaluate_fn
        self.link_fn = link_fn
        self.monitor = monitor or HardwareMonitor.from_config("none", "none")
        self.nodes = NodeRegistry(assets)
        self._usage: dict[
            int, tuple[float, int]
        ] = {}  # node -> (modelled device J, rounds)
        self._round: RoundInProgress | None = None
        self._selected: DeviceState | None = None
        self._plan: Plan | None = None

    def summary(self) -> None:
        """Log the strategy's set-up."""
        log(
            INFO,
            "SplitKD: selector=%s planner=%s",
            self.config.selector,
            self.config.planner,
        )
        log(
            INFO,
            "\tdata plane %s, wire %s",
            self.data_plane.address,
            self.config.wire_dtype,
        )

    # --- Strategy API -----------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Select one device, plan its cut, open its data-plane round, build its message."""
        devices = [
            replace(d, energy_used_j=used, rounds_trained=rounds)
            for d in self.nodes.ready()
            for used, rounds in [self._usage.get(d.node_id, (0.0, 0))]
        ]
        if not devices:
            raise RoundFailedError("no provisioned device is connected")
        if self.link_fn is not None:
            devices = [self.link_fn(d, server_round) for d in devices]
        device = self.selector.select(devices, server_round)
        plan = self.planner.plan(device, server_round)
        if plan.server_clock_hz is not None:
            self.monitor.apply_clock(plan.server_clock_hz)
        token = secrets.token_urlsafe(24)
        self._round = self.data_plane.open_round(
            token, self.server, plan.cut_layer, self.monitor
        )
        self._selected, self._plan = device, plan
        round_plan = protocol.RoundPlan(
            server_round=server_round,
            cut_layer=plan.cut_layer,
            local_epochs=self.config.local_epochs,
            max_batches_per_epoch=self.config.max_batches_per_epoch,
            batch_size=self.config.batch_size,
            seq_len=self.config.seq_len,
            device_lr=self.config.device_lr,
            wire_dtype=self.config.wire_dtype,
            address=self.data_plane.address,
            token=token,
            frame_timeout_s=self.config.frame_timeout_s,
            seed=self.config.seed + server_round,
            tls_root_cert=self.data_plane.root_cert_pem,
        )
        content = RecordDict(
            {
                protocol.PLAN: round_plan.to_record(),
                protocol.DEVICE_WEIGHTS: ArrayRecord(
                    self.server.device_state(plan.cut_layer)
                ),
            }
        )
        return [
            Message(content, dst_node_id=device.node_id, message_type=protocol.TRAIN)
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Commit the device's weights if its stream and reply are sound; else roll back."""
        assert self._round is not None and self._plan is not None
        replies = list(replies)
        try:
            stats = self._round.finish()
            if not replies:
                raise RoundFailedError("the device did not reply")
            reply = replies[0]
            if reply.has_error():
                raise RoundFailedError(f"the device reported: {reply.error.reason}")
            weights = reply.content[protocol.DEVICE_WEIGHTS].to_torch_state_dict()
            device_metrics = dict(reply.content[protocol.METRICS])
            self.server.commit(self._plan.cut_layer, weights)
            self._charge(self._selected, self._plan)
        except (SplitKDError, KeyError, TypeError, ValueError) as err:
            # A malformed reply (missing record, wrong types) is the device's fault, not
            # the run's: roll the round back and go on.
            self._abort_round()
            raise RoundFailedError(f"{type(err).__name__}: {err}") from err
        finally:
            self._round.close()
        return None, MetricRecord({**device_metrics, **stats})

    def _abort_round(self) -> None:
        """Close the data-plane round, if any, and restore the server's state before it."""
        if self._round is not None:
            self._round.close()
        self.server.rollback()

    def _charge(self, device: DeviceState | None, plan: Plan) -> None:
        """Book the round's modelled device energy (for energy-aware selectors)."""
        if device is None:
            return
        used, rounds = self._usage.get(device.node_id, (0.0, 0))
        spent = plan.modelled.get("device_compute_j", 0.0) + plan.modelled.get(
            "device_tx_j", 0.0
        )
        self._usage[device.node_id] = (used + spent, rounds + 1)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Deploy the whole student to every provisioned device and ask for its metrics."""
        config = ConfigRecord(
            {
                **dict(config),
                "seq-len": self.config.seq_len,
                "batch-size": self.config.batch_size,
            }
        )
        content = RecordDict({protocol.STUDENT: arrays, protocol.EVAL_CONFIG: config})
        return [
            Message(content, dst_node_id=d.node_id, message_type=protocol.EVALUATE)
            for d in self.nodes.ready()
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Token-weighted mean of the devices' metrics of the deployed student."""
        good = [r.content[protocol.METRICS] for r in replies if not r.has_error()]
        total = sum(float(m["tokens"]) for m in good)
        if total == 0:
            return None
        keys = [k for k in good[0] if k != "tokens"]
        mean = {
            k: sum(float(m[k]) * float(m["tokens"]) for m in good) / total for k in keys
        }
        return MetricRecord({**mean, "tokens": total, "devices": len(good)})

    # --- the loop -----------------------------------------------------------------

    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run ``num_rounds`` split rounds; a failed round is logged and rolled back."""
        self.summary()
        result = Result()
        config = train_config or ConfigRecord()
        for server_round in range(1, num_rounds + 1):
            started = time.monotonic()
            self.nodes.refresh(grid, timeout)
            record: dict[str, Any] = {"round": server_round}
            try:
                messages = list(
                    self.configure_train(server_round, ArrayRecord(), config, grid)
                )
                record.update(self._describe(server_round))
                replies = self._await_reply(grid, messages[0], timeout)
                _, metrics = self.aggregate_train(server_round, replies)
                record.update({"status": "ok", **dict(metrics or {})})
                result.train_metrics_clientapp[server_round] = metrics
            except SplitKDError as err:
                self._abort_round()  # idempotent; covers failures before the reply
                log(
                    WARNING,
                    "round %s failed and was rolled back: %s",
                    server_round,
                    err,
                )
                record.update({"status": "rolled-back", "error": str(err)})
            record["measured-round-s"] = time.monotonic() - started
            if "measured-device-round-s" in record:
                # What the round cost beyond the device's own handler: the Flower message
                # both ways (and, in simulation, scheduling the ClientApp actor).
                record["measured-control-plane-s"] = (
                    record["measured-round-s"] - record["measured-device-round-s"]
                )
            record.update(self.monitor.metrics())
            record.update({f"eval-{k}": v for k, v in self.evaluate_fn().items()})
            self.metrics_log.append(record)
            log(
                INFO,
                "round %s/%s: %s",
                server_round,
                num_rounds,
                _progress_line(record),
            )
        final = ArrayRecord(self.server.student.state_dict())
        result.arrays = final
        deploy = list(
            self.configure_evaluate(
                num_rounds, final, evaluate_config or ConfigRecord(), grid
            )
        )
        if deploy:
            deployed = self.aggregate_evaluate(
                num_rounds, grid.send_and_receive(deploy, timeout=timeout)
            )
            if deployed is not None:
                result.evaluate_metrics_clientapp[num_rounds] = deployed
        return result

    def _describe(self, server_round: int) -> dict[str, Any]:
        assert self._selected is not None and self._plan is not None
        described = {
            "node": self._selected.node_id,
            "partition-id": self._selected.partition_id,
            "device": self._selected.profile_name,
            "cut-layer": self._plan.cut_layer,
            "plan-feasible": self._plan.feasible,
            **{
                f"modelled-{k.replace('_', '-')}": v
                for k, v in self._plan.modelled.items()
            },
        }
        if self._plan.server_clock_hz is not None:
            described["planned-server-clock-hz"] = self._plan.server_clock_hz
        if self._selected.uplink_bps is not None:
            described["modelled-uplink-bps"] = self._selected.uplink_bps
        return described

    def _await_reply(
        self, grid: Grid, message: Message, timeout: float
    ) -> list[Message]:
        """Wait for the device's reply, but give up as soon as its stream has failed."""
        assert self._round is not None
        (message_id,) = grid.push_messages([message])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replies = list(grid.pull_messages([message_id]))
            if replies:
                return replies
            if self._round.failed():
                return []  # aggregate_train reports the stream's error
            time.sleep(_POLL_S)
        return []


def _progress_line(record: Mapping[str, Any]) -> str:
    parts = [f"{record.get('status')}"]
    for key, fmt in (
        ("partition-id", "vehicle %s"),
        ("cut-layer", "cut %s"),
        ("train-loss", "loss %.3f"),
        ("eval-perplexity", "eval ppl %.2f"),
    ):
        if record.get(key) is not None:
            parts.append(fmt % record[key])
    return ", ".join(parts)

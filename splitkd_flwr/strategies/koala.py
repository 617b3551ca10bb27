"""KOALA: federated knowledge transfer (small client models -> large server model -> back)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from splitkd_flwr import koala_protocol as kp
from splitkd_flwr import protocol
from splitkd_flwr.config import RunConfig
from splitkd_flwr.data.loading import Examples, encode_documents
from splitkd_flwr.data.partition import builtin_split
from splitkd_flwr.data.tokenizer import load_tokenizer
from splitkd_flwr.errors import RoundFailedError
from splitkd_flwr.knowledge_transfer import (
    epoch_batches,
    server_transfer,
    state_of,
    unlabelled_kd_loss,
)
from splitkd_flwr.report import MetricsLog, print_report
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.models import check_pair, load_causal_lm
from splitkd_flwr.strategies.nodes import wait_for_nodes
from splitkd_flwr.workspace import Workspace, resolve_models

FRACTION_TRAIN = (
    1.0  # share of connected nodes sampled per round (wanted: a run-config key)
)
LARGE_DIR = "large-model"

EvalFn = Callable[[], dict[str, Any]]


class Koala(Strategy):
    """KOALA rounds: local CE on devices, then reverse and forward KD on the server's proxy data.

    Contract with the ClientApp: see :mod:`splitkd_flwr.koala_protocol` (``train.koala``);
    ``query.profile`` (see :mod:`splitkd_flwr.protocol`) tells each node's ``partition-id``,
    and node ``i`` gets architecture ``partition-id % len(smalls)``. With one small
    architecture (homogeneous mode) the clients' models are averaged and the average
    teaches the large model; with several (heterogeneous mode) each architecture's clients
    are averaged among themselves only and the architectures' outputs, never their weights,
    are combined into consensus soft labels (`knowledge_transfer.consensus_log_probs`).
    """

    def __init__(
        self,
        config: RunConfig,
        large: PreTrainedModel,
        smalls: Sequence[PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        proxy: Examples,
        metrics_log: MetricsLog,
        evaluate_fn: EvalFn,
    ) -> None:
        self.config = config
        self.large = large
        self.smalls = list(smalls)
        self.proxy = proxy
        self.metrics_log = metrics_log
        self.evaluate_fn = evaluate_fn
        self.loss = unlabelled_kd_loss(
            config.kd_temperature, config.kd_divergence, config.kd_beta
        )
        self.models = [
            kp.pack_model(s.config.to_json_string(), k, tokenizer)
            for k, s in enumerate(smalls)
        ]
        self.architecture: dict[int, int] = {}  # node id -> architecture index
        self._rng = random.Random(config.seed)

    def summary(self) -> None:
        """Log the set-up."""
        mode = "homogeneous" if len(self.smalls) == 1 else "heterogeneous"
        log(
            INFO,
            "KOALA (%s): %d small architecture(s), %d proxy examples",
            mode,
            len(self.smalls),
            len(self.proxy),
        )

    def refresh_nodes(self, grid: Grid, timeout_s: float) -> None:
        """Ask new nodes their partition id (-> architecture); forget nodes that left."""
        node_ids = set(grid.get_node_ids())
        self.architecture = {
            n: a for n, a in self.architecture.items() if n in node_ids
        }
        new = sorted(node_ids - set(self.architecture))
        queries = [
            Message(RecordDict(), dst_node_id=n, message_type=protocol.QUERY_PROFILE)
            for n in new
        ]
        for reply in (
            grid.send_and_receive(queries, timeout=timeout_s) if queries else []
        ):
            if reply.has_error():
                log(
                    WARNING,
                    "node %s did not report its profile: %s",
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            partition_id = int(reply.content[protocol.PROFILE]["partition-id"])  # type: ignore[arg-type]
            self.architecture[reply.metadata.src_node_id] = partition_id % len(
                self.smalls
            )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send each sampled node its architecture's global small model and the plan."""
        nodes = sorted(self.architecture)
        if not nodes:
            raise RoundFailedError("no node answered its profile query")
        sampled = self._rng.sample(nodes, max(1, round(FRACTION_TRAIN * len(nodes))))
        c = self.config
        plan = kp.KoalaPlan(
            server_round,
            c.local_epochs,
            c.max_batches_per_epoch,
            c.batch_size,
            c.seq_len,
            c.device_lr,
            c.seed + server_round,
        ).to_record()
        weights = [ArrayRecord(state_of(s)) for s in self.smalls]
        return [
            Message(
                RecordDict(
                    {kp.PLAN: plan, kp.MODEL: self.models[a], kp.WEIGHTS: weights[a]}
                ),
                dst_node_id=n,
                message_type=kp.TRAIN_KOALA,
            )
            for n in sorted(sampled)
            for a in [self.architecture[n]]
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Group the replies by architecture and run the server's transfer step."""
        updates: list[list[tuple[dict, float]]] = [[] for _ in self.smalls]
        losses, examples = [], 0.0
        for reply in replies:
            if reply.has_error():
                log(
                    WARNING,
                    "node %s failed its local step: %s",
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            metrics = reply.content[kp.METRICS]
            architecture = self.architecture.get(reply.metadata.src_node_id, -1)
            if architecture != int(metrics["architecture"]):  # type: ignore[arg-type]
                log(
                    WARNING,
                    "node %s replied for another architecture; ignored",
                    reply.metadata.src_node_id,
                )
                continue
            count = float(metrics["num-examples"])  # type: ignore[arg-type]
            if count > 0:
                updates[architecture].append(
                    (reply.content[kp.WEIGHTS].to_torch_state_dict(), count)
                )
                losses.append(float(metrics["train-loss"]) * count)  # type: ignore[arg-type]
                examples += count
        if not examples:
            raise RoundFailedError("no node returned a trained small model")
        c = self.config
        proxy = epoch_batches(
            self.proxy,
            c.batch_size,
            c.local_epochs,
            c.max_batches_per_epoch,
            c.seed + server_round,
        )
        figures = server_transfer(
            self.large, self.smalls, updates, proxy, self.loss, c.server_lr, c.device_lr
        )
        figures.update(
            {
                "train-loss": sum(losses) / examples,
                "num-examples": examples,
                "clients": float(sum(len(u) for u in updates)),
            }
        )
        return None, MetricRecord(figures)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """KOALA evaluates on the server's held-out set only: no messages."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Nothing to aggregate (see `configure_evaluate`)."""
        return None

    def start(  # type: ignore[override]
        self, grid: Grid, num_rounds: int = 3, timeout: float = 3600
    ) -> Result:
        """Run ``num_rounds`` rounds; a round without any client update is logged as failed."""
        self.summary()
        result = Result()
        for server_round in range(1, num_rounds + 1):
            started = time.monotonic()
            record: dict[str, Any] = {"round": server_round}
            try:
                self.refresh_nodes(grid, timeout)
                messages = list(
                    self.configure_train(
                        server_round, ArrayRecord(), ConfigRecord(), grid
                    )
                )
                replies = grid.send_and_receive(messages, timeout=timeout)
                _, metrics = self.aggregate_train(server_round, replies)
                record.update({"status": "ok", **dict(metrics or {})})
                result.train_metrics_clientapp[server_round] = metrics
            except RoundFailedError as err:
                log(WARNING, "KOALA round %s failed: %s", server_round, err)
                record.update({"status": "failed", "error": str(err)})
            record["measured-round-s"] = time.monotonic() - started
            record.update(self.evaluate_fn())
            self.metrics_log.append(record)
            log(
                INFO,
                "KOALA round %s/%s: %s, large eval ppl %.2f",
                server_round,
                num_rounds,
                record["status"],
                record["eval-perplexity"],
            )
        result.arrays = ArrayRecord(state_of(self.large))
        return result


def resolve_koala_models(config: RunConfig) -> tuple[Path, list[Path], Path]:
    """The large model's directory (``teacher``), one per small architecture (``student``,
    comma-separated), and the tokenizer's."""
    names = [name.strip() for name in config.student.split(",") if name.strip()] or [
        "default"
    ]
    large_dir, _, tokenizer_dir = resolve_models(replace(config, student=names[0]))
    return (
        large_dir,
        [resolve_models(replace(config, student=name))[1] for name in names],
        tokenizer_dir,
    )


def evaluation(
    large: PreTrainedModel, smalls: Sequence[PreTrainedModel], batches: list
) -> EvalFn:
    """Held-out figures of the large model (``eval-*``) and of each small one (``small-<k>-eval-*``)."""

    def evaluate() -> dict[str, Any]:
        figures = {f"eval-{k}": v for k, v in evaluate_lm(large, batches).items()}
        for index, small in enumerate(smalls):
            figures.update(
                {
                    f"small-{index}-eval-{k}": v
                    for k, v in evaluate_lm(small, batches).items()
                }
            )
        return figures

    return evaluate


def run_koala(grid: Grid, config: RunConfig) -> Path:
    """Load the models, run the KOALA rounds, save the large model; return the output dir."""
    large_dir, small_dirs, tokenizer_dir = resolve_koala_models(config)
    large, tokenizer = load_causal_lm(large_dir), load_tokenizer(tokenizer_dir)
    smalls = [load_causal_lm(d) for d in small_dirs]
    for small in smalls:
        check_pair(large, small)
    workspace = Workspace(
        config,
        large,
        smalls[0],
        tokenizer,
        Path(config.output_dir).expanduser().resolve(),
    )
    workspace.output_dir.mkdir(parents=True, exist_ok=True)
    (workspace.output_dir / "run-config.json").write_text(
        json.dumps(config.to_run_config(), indent=2)
    )
    evaluate = evaluation(large, smalls, workspace.eval_batches())
    # The proxy set is the corpus's server part: disjoint from held-out and device data.
    proxy = encode_documents(
        [d.text for d in builtin_split(1, seed=config.seed).server],
        tokenizer,
        config.seq_len,
    )
    metrics_log = MetricsLog(workspace.output_dir)
    initial = evaluate()
    metrics_log.append({"round": 0, "status": "initial", **initial})
    strategy = Koala(config, large, smalls, tokenizer, proxy, metrics_log, evaluate)
    wait_for_nodes(grid, config.min_nodes, config.round_timeout_s)
    strategy.start(grid, num_rounds=config.num_rounds, timeout=config.round_timeout_s)
    large_out = workspace.output_dir / LARGE_DIR
    large.save_pretrained(large_out)
    tokenizer.save_pretrained(large_out)
    for index, small in enumerate(smalls):
        small.save_pretrained(workspace.output_dir / f"small-{index}")
    final = metrics_log.records[-1]
    summary = {
        "mode": "homogeneous" if len(smalls) == 1 else "heterogeneous",
        "initial large-model perplexity": initial["eval-perplexity"],
        "final large-model perplexity": final["eval-perplexity"],
        **{
            f"final small-{k} perplexity": final[f"small-{k}-eval-perplexity"]
            for k in range(len(smalls))
        },
        "large model saved to": str(large_out),
        "metrics saved to": str(metrics_log.jsonl_path),
    }
    (workspace.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_report(metrics_log.records, summary)
    return workspace.output_dir

"""KOALA: federated knowledge transfer (small client models -> large server model -> back)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from splitkd_flwr.core.errors import ConfigError, RoundFailedError
from splitkd_flwr.data.loading import Examples
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.loop import RoundStrategy, TrainRound
from splitkd_flwr.flower.nodes import query_profiles
from splitkd_flwr.koala import protocol as kp
from splitkd_flwr.koala.sequence import SequenceKD
from splitkd_flwr.koala.transfer import (
    epoch_batches,
    server_transfer,
    state_of,
    unlabelled_kd_loss,
)
from splitkd_flwr.split.partition import check_weights

logger = logging.getLogger(__name__)

# Share of connected nodes sampled per round (wanted: a run-config key).
FRACTION_TRAIN = 1.0
LARGE_DIR = "large-model"

EvalFn = Callable[[], dict[str, Any]]


@dataclass
class KoalaRound(TrainRound):
    """An open KOALA round: the architecture each sampled node was sent."""

    architecture: dict[int, int] = field(default_factory=dict)


class Koala(RoundStrategy):
    """KOALA rounds: local CE on devices, then reverse and forward KD on the server's proxy data.

    Contract with the ClientApp: see :mod:`splitkd_flwr.koala.protocol` (``train.koala``);
    ``query.profile`` (see :mod:`splitkd_flwr.split_kd.protocol`) tells each node's ``partition-id``,
    and node ``i`` gets architecture ``partition-id % len(smalls)``. With one small
    architecture (homogeneous mode) the clients' models are averaged and the average
    teaches the large model; with several (heterogeneous mode) each architecture's clients
    are averaged among themselves only and the architectures' outputs, never their weights,
    are combined into consensus soft labels (`consensus.consensus_log_probs`).
    """

    def __init__(
        self,
        config: RunConfig,
        large: PreTrainedModel,
        smalls: Sequence[PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        proxy: Examples,
        evaluate_fn: EvalFn,
        sequence: SequenceKD | None = None,
    ) -> None:
        self.config = config
        self.large = large
        self.smalls = list(smalls)
        self.tokenizer = tokenizer
        self.proxy = proxy
        self.evaluate_fn = evaluate_fn
        self.sequence = sequence
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
        logger.info(
            "KOALA (%s): %d small architecture(s), %d proxy examples, %s",
            mode,
            len(self.smalls),
            len(self.proxy),
            f"{self.sequence.prompts_per_round} prompts answered per round"
            if self.sequence
            else "token-level KD only",
        )

    def refresh_nodes(self, grid: Grid, timeout_s: float) -> None:
        """Ask new nodes their partition id (-> architecture); forget nodes that left."""
        node_ids = set(grid.get_node_ids())
        self.architecture = {
            n: a for n, a in self.architecture.items() if n in node_ids
        }
        new = sorted(node_ids - set(self.architecture))
        for node_id, profile in query_profiles(grid, new, timeout_s).items():
            try:
                partition_id = int(profile["partition-id"])  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError) as err:
                logger.warning("node %s gave no usable profile: %s", node_id, err)
                continue
            self.architecture[node_id] = partition_id % len(self.smalls)

    def configure_train(self, server_round: int, grid: Grid) -> KoalaRound:
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
        architecture = {n: self.architecture[n] for n in sorted(sampled)}
        messages = [
            Message(
                RecordDict(
                    {kp.PLAN: plan, kp.MODEL: self.models[a], kp.WEIGHTS: weights[a]}
                ),
                dst_node_id=n,
                message_type=kp.TRAIN_KOALA,
            )
            for n, a in architecture.items()
        ]
        return KoalaRound(server_round, messages, architecture=architecture)

    def aggregate_train(
        self, train_round: TrainRound, replies: list[Message]
    ) -> dict[str, Any]:
        """Group the replies by architecture and run the server's transfer step."""
        updates: list[list[tuple[dict, float]]] = [[] for _ in self.smalls]
        losses, examples = [], 0.0
        for reply in replies:
            if reply.has_error():
                logger.warning(
                    "node %s failed its local step: %s",
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            metrics = reply.content[kp.METRICS]
            assert isinstance(train_round, KoalaRound)
            architecture = train_round.architecture.get(reply.metadata.src_node_id, -1)
            if architecture != int(metrics["architecture"]):  # type: ignore[arg-type]
                logger.warning(
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
            c.seed + train_round.server_round,
        )
        figures = server_transfer(
            self.large,
            self.smalls,
            updates,
            proxy,
            self.loss,
            c.server_lr,
            c.device_lr,
            top_k=c.koala_top_k,
            sequence=self.sequence,
            seed=c.seed + train_round.server_round,
        )
        figures.update(
            {
                "train-loss": sum(losses) / examples,
                "num-examples": examples,
                "clients": float(sum(len(u) for u in updates)),
            }
        )
        return figures

    def state_dict(self) -> dict[str, Any]:
        """The large model, each small architecture's global model and the node sampler.

        Both KD directions build a fresh AdamW each round (``transfer``), so the weights
        are the whole training state.
        """
        return {
            "large": self.large.state_dict(),
            "smalls": [small.state_dict() for small in self.smalls],
            "sampler": self._rng.getstate(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned; names and shapes must match exactly."""
        if len(state["smalls"]) != len(self.smalls):
            raise ConfigError(
                f"checkpoint holds {len(state['smalls'])} small architectures, the run "
                f"config names {len(self.smalls)} (student)"
            )
        for model, saved, what in [
            (self.large, state["large"], "checkpointed large model"),
            *(
                (small, saved, f"checkpointed small-{k}")
                for k, (small, saved) in enumerate(zip(self.smalls, state["smalls"]))
            ),
        ]:
            check_weights(model.state_dict(), saved, what)
            model.load_state_dict(saved)
        version, internal, gauss = state["sampler"]
        self._rng.setstate((version, tuple(internal), gauss))

    def evaluate(self) -> dict[str, Any]:
        """The large model's (``eval-*``) and each small model's held-out figures."""
        return self.evaluate_fn()

    def finish(
        self, grid: Grid, output_dir: Path, records: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Save the large model (with the tokenizer) and the small ones; summarise."""
        large_out = output_dir / LARGE_DIR
        self.large.save_pretrained(large_out)
        self.tokenizer.save_pretrained(large_out)
        for index, small in enumerate(self.smalls):
            small.save_pretrained(output_dir / f"small-{index}")
        initial, final = records[0], records[-1]
        return {
            "mode": "homogeneous" if len(self.smalls) == 1 else "heterogeneous",
            "initial large-model perplexity": initial["eval-perplexity"],
            "final large-model perplexity": final["eval-perplexity"],
            **{
                f"final small-{k} perplexity": final[f"small-{k}-eval-perplexity"]
                for k in range(len(self.smalls))
            },
            "large model saved to": str(large_out),
        }

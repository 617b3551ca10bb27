"""A short split-KD run in one process, capturing what the server receives in its last round.

The real strategy, client handlers and gRPC data plane run; only Flower's processes are
replaced by :class:`~splitkd_flwr.split_kd.loopback.LoopbackGrid`. What the privacy
audit (:mod:`splitkd_flwr.privacy`) attacks is what this capture holds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from flwr.app import Message
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from splitkd_flwr.core.errors import RoundFailedError
from splitkd_flwr.data.loading import encode_documents, iterate_batches
from splitkd_flwr.data.partition import builtin_split
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.device_data import device_batches, load_device_tokenizer
from splitkd_flwr.flower.node_config import NodeConfig
from splitkd_flwr.flower.run import held_out_batches
from splitkd_flwr.privacy.audit import ServerKnowledge
from splitkd_flwr.privacy.capture import FrameExchange, RoundCapture
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split_kd import protocol
from splitkd_flwr.split_kd.loopback import LoopbackGrid
from splitkd_flwr.split_kd.private_layers import private_path
from splitkd_flwr.split_kd.run import build_split_kd
from splitkd_flwr.split_kd.workspace import Workspace

_TIMEOUT_S = 600.0
# Of the server's own documents, how many the decoder attack trains on (minutes on 2 cores)
SERVER_DOCUMENTS = 1500


@dataclass
class AuditRun:
    """The captured last round, what the server knew, and the run's utility."""

    capture: RoundCapture
    knowledge: ServerKnowledge
    messages: list[Message]  # every Flower message and reply of the captured round
    initial_perplexity: float
    final_perplexity: float
    bytes_up_per_step: float
    bytes_down_per_step: float
    # With device-private-layers: the audited device's own student (the server's, with
    # the device's trained private layers) on the same held-out batches; else None.
    device_perplexity: float | None = None


def server_batches(
    config: RunConfig, tokenizer: PreTrainedTokenizerBase
) -> list[dict[str, torch.Tensor]]:
    """The server's own text (its part of the built-in corpus, or its held-out data)."""
    if config.eval_data != "builtin":
        return held_out_batches(replace(config, eval_batches=0), tokenizer)
    texts = [d.text for d in builtin_split(1, seed=config.seed).server]
    examples = encode_documents(texts[:SERVER_DOCUMENTS], tokenizer, config.seq_len)
    return list(iterate_batches(examples, 64))


def run_and_capture(config: RunConfig, work_dir: Path, num_devices: int) -> AuditRun:
    """Run ``num-rounds`` rounds with ``num_devices`` in-process devices; capture the last."""
    with build_split_kd(config, work_dir / "run") as strategy:
        grid = LoopbackGrid(num_devices, work_dir / "devices")
        strategy.refresh_nodes(grid, _TIMEOUT_S)
        initial = strategy.evaluate()["eval-perplexity"]
        exchanges: list[FrameExchange] = []
        for server_round in range(1, config.num_rounds + 1):
            last = server_round == config.num_rounds
            if last:
                before = copy.deepcopy(strategy.server.student)
                logged = len(grid.log)
                strategy.data_plane.observer = lambda frame, answer: exchanges.append(
                    FrameExchange(dict(frame.tensors), dict(answer.tensors), frame.meta)
                )
            train_round = strategy.configure_train(server_round, grid)
            replies = strategy.collect_replies(grid, train_round, _TIMEOUT_S)
            try:
                stats = strategy.aggregate_train(train_round, replies)
            except RoundFailedError:
                strategy.abort_train(train_round)
                raise
        strategy.data_plane.observer = None
        final = strategy.evaluate()["eval-perplexity"]
        teacher = strategy.server.teacher
        private = (
            strategy.server.private_state() if config.device_private_layers else {}
        )
        final_student = strategy.server.student
    (train,) = [
        e for e in grid.log[logged:] if e.message.metadata.message_type == "train"
    ]
    assert train.reply is not None
    plan = protocol.RoundPlan.from_record(train.message.content[protocol.PLAN])
    context = grid.contexts[train.message.metadata.dst_node_id]
    node = NodeConfig.from_node_config(context.node_config)
    tokenizer = load_device_tokenizer(node)
    sent = train.message.content[protocol.DEVICE_WEIGHTS].to_torch_state_dict()
    # The server knows the private layers as they were at the start (its own student
    # holds them; it sent them in the device's first round), never as the device trained
    # them: a stale copy after the device's first round.
    sent = {**sent, **private}
    capture = RoundCapture(
        split_mode=plan.split_mode,
        cut_layer=plan.cut_layer,
        device_lr=plan.device_lr,
        sent_weights=sent,
        returned_weights=train.reply.content[
            protocol.DEVICE_WEIGHTS
        ].to_torch_state_dict(),
        exchanges=exchanges,
        truth=list(device_batches(node, tokenizer, plan)),
    )
    workspace = Workspace(config, teacher, before, tokenizer)
    knowledge = ServerKnowledge(
        teacher=teacher,
        student=before,
        server_batches=server_batches(config, tokenizer),
        loss_fn=workspace.loss_fn(),
        kd_alpha=config.kd_alpha,
        pad_id=int(tokenizer.pad_token_id or 0),
    )
    steps = max(len(capture.steps()), 1)
    own = private_path(node.cache_dir, context.run_id)
    device_perplexity = None
    if own.exists():
        # The server's student lacks the trained private layers; the device's has them.
        device_student = copy.deepcopy(final_student)
        device_student.load_state_dict(load_file(str(own)), strict=False)
        held_out = held_out_batches(config, tokenizer)
        device_perplexity = evaluate_lm(device_student, held_out)["perplexity"]
    return AuditRun(
        capture=capture,
        knowledge=knowledge,
        messages=[m for e in grid.log[logged:] for m in (e.message, e.reply) if m],
        initial_perplexity=initial,
        final_perplexity=final,
        bytes_up_per_step=stats["measured-bytes-up"] / steps,
        bytes_down_per_step=stats["measured-bytes-down"] / steps,
        device_perplexity=device_perplexity,
    )

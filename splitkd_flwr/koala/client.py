"""The device side of KOALA: train the received small model on private data with cross-entropy."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from transformers import PreTrainedTokenizerBase

from splitkd_flwr.core.errors import ModelError
from splitkd_flwr.data.knowledge import knowledge_split
from splitkd_flwr.data.loading import encode_documents
from splitkd_flwr.flower.device_data import PARTITION_SEED, device_batches
from splitkd_flwr.flower.node_config import NodeConfig
from splitkd_flwr.koala import protocol as kp
from splitkd_flwr.koala.transfer import epoch_batches, state_of, train_ce
from splitkd_flwr.split.models import load_causal_lm


@functools.lru_cache(maxsize=4)
def _client_texts(num_partitions: int, partition_id: int) -> tuple[str, ...]:
    split = knowledge_split(num_partitions, seed=PARTITION_SEED)
    return tuple(split.clients[partition_id])


def local_batches(
    node: NodeConfig, tokenizer: PreTrainedTokenizerBase, plan: kp.KoalaPlan
) -> Iterable[dict[str, torch.Tensor]]:
    """A client's round of mini-batches: its ``data-path`` text, else its part of the
    knowledge split (`data/knowledge.py`: client-topic dialogues the server never sees)."""
    if node.data_path:
        # KoalaPlan carries every field device_batches reads (epochs, cap, batch, seq-len, seed).
        return device_batches(node, tokenizer, plan)
    texts = _client_texts(node.num_partitions, node.partition_id)
    examples = encode_documents(texts, tokenizer, plan.seq_len)
    return epoch_batches(
        examples,
        plan.batch_size,
        plan.local_epochs,
        plan.max_batches_per_epoch,
        plan.seed,
    )


def koala_train(msg: Message, context: Context) -> Message:
    """Handle ``train.koala``: build the small model, train it locally, return it and its figures.

    The contract (record keys, metrics) is in :mod:`splitkd_flwr.koala.protocol`.
    """
    started = time.perf_counter()
    node = NodeConfig.from_node_config(context.node_config, context.run_config)
    plan = kp.KoalaPlan.from_record(msg.content[kp.PLAN])
    model_record = msg.content[kp.MODEL]
    torch.manual_seed(plan.seed)
    model = load_causal_lm(json.loads(str(model_record["model-config"])))
    weights = msg.content[kp.WEIGHTS].to_torch_state_dict()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # A tied head is one tensor under two names; anything else missing is a wrong message.
    if unexpected or [name for name in missing if name != "lm_head.weight"]:
        raise ModelError(
            f"koala weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    tokenizer = kp.unpack_tokenizer(model_record, node.cache_dir / "koala-tokenizer")
    figures = train_ce(model, local_batches(node, tokenizer, plan), plan.device_lr)
    metrics = MetricRecord(
        {
            **figures,
            "architecture": int(model_record["architecture"]),  # type: ignore[arg-type]
            "partition-id": node.partition_id,
            "measured-device-round-s": time.perf_counter() - started,
        }
    )
    content = RecordDict(
        {kp.WEIGHTS: ArrayRecord(state_of(model)), kp.METRICS: metrics}
    )
    return Message(content, reply_to=msg)

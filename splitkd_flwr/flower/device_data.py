"""A device's private data: its built-in corpus partition or its own text, as mini-batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.loading import (
    Examples,
    encode_documents,
    iterate_batches,
    read_documents,
)
from splitkd_flwr.data.partition import builtin_split
from splitkd_flwr.data.tokenizer import load_tokenizer
from splitkd_flwr.flower.node_config import NodeConfig

# Every 10th local example is held out to evaluate the deployed student
HOLDOUT_EVERY = 10
# The built-in partition must be the same on every device and the server
PARTITION_SEED = 0


class BatchPlan(Protocol):
    """What a round plan says about the local mini-batches (split-KD and KOALA plans both do)."""

    seq_len: int
    batch_size: int
    local_epochs: int
    max_batches_per_epoch: int
    seed: int


def load_device_tokenizer(node: NodeConfig) -> PreTrainedTokenizerBase:
    """The tokenizer the server provisioned to this device."""
    return load_tokenizer(node.cache_dir / "tokenizer")


def _local_examples(
    node: NodeConfig, tokenizer: PreTrainedTokenizerBase, seq_len: int
) -> Examples:
    if node.data_path:
        texts = read_documents(node.data_path)
    elif node.vehicle_data is not None:
        texts = node.vehicle_data.texts(node.partition_id, node.num_partitions)
    else:
        split = builtin_split(node.num_partitions, seed=PARTITION_SEED)
        texts = [doc.text for doc in split.devices[node.partition_id]]
    examples = encode_documents(texts, tokenizer, seq_len)
    if len(examples) == 0:
        raise ConfigError(
            f"device {node.partition_id} has no usable text "
            f"({node.data_path or (node.vehicle_data and node.vehicle_data.path) or 'built-in'})"
        )
    return examples


def _part(examples: Examples, held_out: bool) -> Examples:
    index = torch.arange(len(examples))
    keep = (index % HOLDOUT_EVERY == 0) if held_out else (index % HOLDOUT_EVERY != 0)
    if len(examples) < HOLDOUT_EVERY:  # too little to hold anything out: use it all
        keep = torch.ones_like(keep)
    return Examples(examples.input_ids[keep], examples.attention_mask[keep])


def device_batches(
    node: NodeConfig, tokenizer: PreTrainedTokenizerBase, plan: BatchPlan
) -> Iterator[dict[str, torch.Tensor]]:
    """The round's training mini-batches: ``local-epochs`` shuffled passes, each capped."""
    examples = _part(_local_examples(node, tokenizer, plan.seq_len), held_out=False)
    for epoch in range(plan.local_epochs):
        batches = iterate_batches(
            examples, plan.batch_size, shuffle=True, seed=plan.seed * 1000 + epoch
        )
        for index, batch in enumerate(batches):
            if plan.max_batches_per_epoch and index >= plan.max_batches_per_epoch:
                break
            yield batch


def device_eval_batches(
    node: NodeConfig,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int = 64,
    batch_size: int = 16,
) -> list[dict[str, torch.Tensor]]:
    """The device's held-out mini-batches (never trained on)."""
    examples = _part(_local_examples(node, tokenizer, seq_len), held_out=True)
    return list(iterate_batches(examples, batch_size))

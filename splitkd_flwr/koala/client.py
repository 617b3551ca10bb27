"""The device side of KOALA: train the received small model on private data with cross-entropy."""

from __future__ import annotations

import json
import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from splitkd_flwr.core.errors import ModelError
from splitkd_flwr.flower.device_data import device_batches
from splitkd_flwr.flower.node_config import NodeConfig
from splitkd_flwr.koala import protocol as kp
from splitkd_flwr.koala.transfer import state_of, train_ce
from splitkd_flwr.split.models import load_causal_lm


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
    # KoalaPlan carries every field device_batches reads (epochs, cap, batch, seq-len, seed).
    figures = train_ce(model, device_batches(node, tokenizer, plan), plan.device_lr)
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

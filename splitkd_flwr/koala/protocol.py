"""The KOALA control-plane contract: message type, record keys, the round plan, model packing.

Per round the server sends ``train.koala`` to each sampled node with

- ``koala-plan`` ConfigRecord: a :class:`KoalaPlan` (hyphenated keys);
- ``koala-model`` ConfigRecord: ``model-config`` (the small model's Transformers config as
  JSON, so a device needs no model hub), ``architecture`` (its index), ``tokenizer-files`` and
  ``tokenizer-data`` (the tokenizer, a few KB for the built-in one);
- ``koala-weights`` ArrayRecord: the global small model of that architecture.

The device replies ``koala-weights`` (after local CE training on its private data) and
``metrics`` (``train-loss``, ``num-examples``, ``tokens``, ``batches``, ``architecture``,
``partition-id``, ``measured-device-round-s``). Large-model weights never leave the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord
from transformers import PreTrainedTokenizerBase

from splitkd_flwr.data.tokenizer import load_tokenizer, tokenizer_files
from splitkd_flwr.flower.protocol import (
    METRICS,
    PlanRecord,
    tokenizer_record,
    write_tokenizer,
)

TRAIN_KOALA = "train.koala"
PLAN = "koala-plan"
MODEL = "koala-model"
WEIGHTS = "koala-weights"

__all__ = ["METRICS", "MODEL", "PLAN", "TRAIN_KOALA", "WEIGHTS", "KoalaPlan"]


@dataclass(frozen=True)
class KoalaPlan(PlanRecord):
    """What a device needs for its local step (also what `device_data.device_batches` reads)."""

    server_round: int
    local_epochs: int
    max_batches_per_epoch: int
    batch_size: int
    seq_len: int
    device_lr: float
    seed: int


def pack_model(
    model_config_json: str, architecture: int, tokenizer: PreTrainedTokenizerBase
) -> ConfigRecord:
    """The ``koala-model`` record of one architecture (config JSON + tokenizer files)."""
    return ConfigRecord(
        {
            "model-config": model_config_json,
            "architecture": architecture,
            **tokenizer_record(tokenizer_files(tokenizer)),
        }
    )


def unpack_tokenizer(record: ConfigRecord, directory: Path) -> PreTrainedTokenizerBase:
    """Write the record's tokenizer files into ``directory`` and load them."""
    return load_tokenizer(write_tokenizer(record, directory, repr(MODEL)))

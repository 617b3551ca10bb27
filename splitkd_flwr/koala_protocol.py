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

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord
from transformers import PreTrainedTokenizerBase

from splitkd_flwr.data.tokenizer import load_tokenizer
from splitkd_flwr.errors import ConfigError, ModelError

TRAIN_KOALA = "train.koala"
PLAN = "koala-plan"
MODEL = "koala-model"
WEIGHTS = "koala-weights"
METRICS = "metrics"


@dataclass(frozen=True)
class KoalaPlan:
    """What a device needs for its local step (also what `device_data.device_batches` reads)."""

    server_round: int
    local_epochs: int
    max_batches_per_epoch: int
    batch_size: int
    seq_len: int
    device_lr: float
    seed: int

    def to_record(self) -> ConfigRecord:
        """Encode as a ConfigRecord with hyphenated keys."""
        return ConfigRecord(
            {
                f.name.replace("_", "-"): getattr(self, f.name)
                for f in dataclasses.fields(self)
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> KoalaPlan:
        """Decode; a missing or mistyped key is a ConfigError naming it."""
        values: dict[str, int | float] = {}
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            value = record.get(key)
            kind = float if f.type == "float" else int
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (kind is int and not isinstance(value, int))
            ):
                raise ConfigError(
                    f"koala plan {key!r} must be {kind.__name__}, got {value!r}"
                )
            values[f.name] = kind(value)
        return cls(**values)  # type: ignore[arg-type]


def pack_model(
    model_config_json: str, architecture: int, tokenizer: PreTrainedTokenizerBase
) -> ConfigRecord:
    """The ``koala-model`` record of one architecture (config JSON + tokenizer files)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {
            p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()
        }
    return ConfigRecord(
        {
            "model-config": model_config_json,
            "architecture": architecture,
            "tokenizer-files": list(files),
            "tokenizer-data": list(files.values()),
        }
    )


def unpack_tokenizer(record: ConfigRecord, directory: Path) -> PreTrainedTokenizerBase:
    """Write the record's tokenizer files into ``directory`` and load them."""
    names = [str(n) for n in record["tokenizer-files"]]  # type: ignore[union-attr]
    blobs = list(record["tokenizer-data"])  # type: ignore[arg-type]
    if len(names) != len(blobs) or any(
        "/" in n or "\\" in n or n.startswith(".") for n in names
    ):
        raise ModelError(f"malformed tokenizer files in {MODEL!r}: {names}")
    directory.mkdir(parents=True, exist_ok=True)
    for name, blob in zip(names, blobs):
        (directory / name).write_bytes(blob)  # type: ignore[arg-type]
    return load_tokenizer(directory)

"""What a device must hold before it can train: student config, tokenizer, teacher embedding.

The server packs them once into Flower records (a deployment has no model hub either);
the device keeps them in its cache directory, keyed by a content hash so that a changed
teacher or student is provisioned again and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, PreTrainedTokenizerBase

from splitkd_flwr.core.errors import ModelError
from splitkd_flwr.data.tokenizer import tokenizer_files
from splitkd_flwr.flower.protocol import tokenizer_record, write_tokenizer

_EMBEDDING_KEY = "weight"
_KEY_FILE = "assets-key.txt"


@dataclass(frozen=True)
class DeviceAssets:
    """The device-side assets, packed for a Flower message."""

    key: str  # content hash; equal keys mean equal assets
    config: ConfigRecord  # student config JSON, tokenizer files, key
    teacher_embedding: ArrayRecord  # the teacher's input-embedding table only

    @classmethod
    def pack(
        cls,
        student_config_json: str,
        tokenizer: PreTrainedTokenizerBase,
        teacher_embedding: torch.Tensor,
    ) -> DeviceAssets:
        """Pack the assets; ``teacher_embedding`` is the (V, d_teacher) input-embedding table."""
        files = tokenizer_files(tokenizer)
        digest = hashlib.sha256(student_config_json.encode())
        for name, data in files.items():
            digest.update(name.encode() + data)
        embedding = teacher_embedding.detach().to(torch.float32).cpu().contiguous()
        digest.update(
            str(tuple(embedding.shape)).encode() + embedding.numpy().tobytes()
        )
        key = digest.hexdigest()[:16]
        config = ConfigRecord(
            {
                "assets-key": key,
                "student-config": student_config_json,
                **tokenizer_record(files),
            }
        )
        return cls(key, config, ArrayRecord({_EMBEDDING_KEY: embedding}))


def stored_key(directory: Path) -> str:
    """The assets key held in ``directory`` ("" if none)."""
    path = directory / _KEY_FILE
    return path.read_text().strip() if path.is_file() else ""


def store(directory: Path, config: ConfigRecord, teacher_embedding: ArrayRecord) -> str:
    """Write received assets into ``directory``; return their key."""
    key = str(config["assets-key"])
    state = teacher_embedding.to_torch_state_dict()
    if set(state) != {_EMBEDDING_KEY} or state[_EMBEDDING_KEY].ndim != 2:
        raise ModelError("provisioned teacher embedding must be one 2-D table")
    directory.mkdir(parents=True, exist_ok=True)
    # a half-written cache is never "current"
    (directory / _KEY_FILE).unlink(missing_ok=True)
    write_tokenizer(config, directory / "tokenizer", "provisioned assets")
    (directory / "student-config.json").write_text(str(config["student-config"]))
    save_file(state, str(directory / "teacher-embedding.safetensors"))
    (directory / _KEY_FILE).write_text(key)
    return key


def load_student_config(directory: Path):  # noqa: ANN201 - a transformers PretrainedConfig
    """The student's config from a provisioned ``directory``."""
    data = json.loads((directory / "student-config.json").read_text())
    return AutoConfig.for_model(**data)


def load_teacher_embedding(directory: Path) -> torch.Tensor:
    """The teacher's (V, d_teacher) input-embedding table from a provisioned ``directory``."""
    return load_file(str(directory / "teacher-embedding.safetensors"))[_EMBEDDING_KEY]

"""What a device must hold before it can train: student config, tokenizer, teacher embedding.

The server packs them once into Flower records (a deployment has no model hub either);
the device keeps them in its cache directory, keyed by a content hash so that a changed
teacher or student is provisioned again and an unchanged one never is. The teacher's
table travels in the teacher's dtype (bf16: half the fp32 bytes). A LoRA run also
provisions the student's frozen base below the last block once, so that its rounds
carry only adapters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, PreTrainedTokenizerBase

from splitkd_flwr.core.errors import ModelError
from splitkd_flwr.data.tokenizer import tokenizer_files
from splitkd_flwr.flower.protocol import tokenizer_record, write_tokenizer
from splitkd_flwr.split_kd.arrays import from_record, state_bytes, to_record

_EMBEDDING_KEY = "weight"
_KEY_FILE = "assets-key.txt"
_BASE_FILE = "student-base.safetensors"


@dataclass(frozen=True)
class DeviceAssets:
    """The device-side assets, packed for a Flower message."""

    key: str  # content hash; equal keys mean equal assets
    config: ConfigRecord  # student config JSON, tokenizer files, key
    # the teacher's input-embedding table, and for LoRA the student's frozen base
    teacher_embedding: ArrayRecord
    sizes_bytes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def pack(
        cls,
        student_config_json: str,
        tokenizer: PreTrainedTokenizerBase,
        teacher_embedding: torch.Tensor,
        student_base: Mapping[str, torch.Tensor] | None = None,
    ) -> DeviceAssets:
        """Pack the assets; ``teacher_embedding`` is the (V, d_teacher) input-embedding table
        (kept in its dtype); ``student_base`` the frozen student weights of a LoRA run."""
        files = tokenizer_files(tokenizer)
        digest = hashlib.sha256(student_config_json.encode())
        for name, data in files.items():
            digest.update(name.encode() + data)
        embedding = teacher_embedding.detach().cpu().contiguous()
        base = {f"student.{k}": v for k, v in (student_base or {}).items()}
        for name, tensor in {_EMBEDDING_KEY: embedding, **base}.items():
            raw = tensor.detach().cpu().contiguous().view(torch.uint8).numpy()
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(raw.tobytes())
        key = digest.hexdigest()[:16]
        config = ConfigRecord(
            {
                "assets-key": key,
                "student-config": student_config_json,
                **tokenizer_record(files),
            }
        )
        sizes = {
            "provision-teacher-embedding-bytes": state_bytes({"e": embedding}),
            "provision-student-base-bytes": state_bytes(base),
        }
        record = to_record({_EMBEDDING_KEY: embedding, **base})
        return cls(key, config, record, sizes)


def stored_key(directory: Path) -> str:
    """The assets key held in ``directory`` ("" if none)."""
    path = directory / _KEY_FILE
    return path.read_text().strip() if path.is_file() else ""


def store(directory: Path, config: ConfigRecord, teacher_embedding: ArrayRecord) -> str:
    """Write received assets into ``directory``; return their key."""
    key = str(config["assets-key"])
    received = from_record(teacher_embedding)
    state = {_EMBEDDING_KEY: received.pop(_EMBEDDING_KEY, None)}
    if state[_EMBEDDING_KEY] is None or state[_EMBEDDING_KEY].ndim != 2:
        raise ModelError("provisioned teacher embedding must be one 2-D table")
    if any(not name.startswith("student.") for name in received):
        raise ModelError(f"unexpected provisioned tensors: {sorted(received)[:3]}")
    base = {name.removeprefix("student."): t for name, t in received.items()}
    directory.mkdir(parents=True, exist_ok=True)
    # a half-written cache is never "current"
    (directory / _KEY_FILE).unlink(missing_ok=True)
    write_tokenizer(config, directory / "tokenizer", "provisioned assets")
    (directory / "student-config.json").write_text(str(config["student-config"]))
    save_file(state, str(directory / "teacher-embedding.safetensors"))
    (directory / _BASE_FILE).unlink(missing_ok=True)
    if base:
        save_file(base, str(directory / _BASE_FILE))
    (directory / _KEY_FILE).write_text(key)
    return key


def load_student_config(directory: Path):  # noqa: ANN201 - a transformers PretrainedConfig
    """The student's config from a provisioned ``directory``."""
    data = json.loads((directory / "student-config.json").read_text())
    return AutoConfig.for_model(**data)


def load_teacher_embedding(directory: Path) -> torch.Tensor:
    """The teacher's (V, d_teacher) input-embedding table from a provisioned ``directory``."""
    return load_file(str(directory / "teacher-embedding.safetensors"))[_EMBEDDING_KEY]


def load_student_base(directory: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The provisioned frozen student weights ``names`` (only those are read from disk).

    Raises
    ------
    ModelError
        No base was provisioned (not a LoRA run) or it lacks one of ``names``.
    """
    path = directory / _BASE_FILE
    if not path.is_file():
        raise ModelError(
            f"no provisioned student base in {directory}: a LoRA round needs one"
        )
    with safe_open(str(path), framework="pt") as f:
        missing = sorted(set(names) - set(f.keys()))
        if missing:
            raise ModelError(f"provisioned student base lacks {missing[:3]}")
        return {name: f.get_tensor(name) for name in names}

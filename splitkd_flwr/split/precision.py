"""Numeric precision of a run: the teacher's dtype and the student's training precision.

``bf16-mixed`` runs the student's forward under bf16 autocast while its trainable
weights and the optimizer's moments stay fp32 (the master copy); the KD loss upcasts
its logits to fp32 (see :mod:`splitkd_flwr.split.loss`). The teacher is never trained,
so it can simply be stored in bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from splitkd_flwr.core.constants import TEACHER_DTYPES, TRAIN_PRECISIONS
from splitkd_flwr.core.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def teacher_dtype(name: str, device: torch.device) -> torch.dtype:
    """The teacher's parameter dtype; ``auto`` is bf16 on an accelerator that has it."""
    if name not in TEACHER_DTYPES:
        raise ConfigError(
            f"teacher-dtype must be one of {TEACHER_DTYPES}, got {name!r}"
        )
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a training precision (None: plain fp32)."""
    if precision not in TRAIN_PRECISIONS:
        raise ConfigError(
            f"train-precision must be one of {TRAIN_PRECISIONS}, got {precision!r}"
        )
    return torch.bfloat16 if precision == "bf16-mixed" else None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """bf16 autocast on ``device`` when ``dtype`` is given; nothing otherwise."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def student_base_dtype(lora: bool, precision: str) -> torch.dtype:
    """The student's stored dtype: bf16 for a frozen LoRA base under bf16-mixed, else fp32.

    Trained weights are the fp32 master copy; a LoRA base never trains, so under
    ``bf16-mixed`` it is kept in bf16 (what autocast would cast it to anyway).
    """
    return torch.bfloat16 if lora and autocast_dtype(precision) else torch.float32


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each student block's activations in backward instead of storing them.

    Non-reentrant checkpointing: it works when a block's input needs no grad (a frozen
    LoRA base below the first adapter) and with blocks called one by one by a segment.
    """
    # transformers 5.x's name; `gradient_checkpointing_enable` is its deprecated alias.
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False}
    )

"""Torch state dicts in Flower ArrayRecords, in any float dtype (bf16 included).

Flower's ``Array`` goes through numpy, which has no bfloat16: a bf16 tensor travels as
its raw 16-bit pattern (an int16 view, no copy, no rounding) under ``name + BF16_SUFFIX``
and is viewed back on arrival. Nothing is pickled either way.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord

BF16_SUFFIX = "::bf16"


def to_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Pack host tensors (any dtype) into an ArrayRecord."""
    packed = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:
            packed[name + BF16_SUFFIX] = tensor.view(torch.int16)
        else:
            packed[name] = tensor
    return ArrayRecord(packed)


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Unpack an ArrayRecord written by :func:`to_record` (or a plain one)."""
    state = {}
    for name, tensor in record.to_torch_state_dict().items():
        if name.endswith(BF16_SUFFIX) and tensor.dtype == torch.int16:
            state[name.removesuffix(BF16_SUFFIX)] = tensor.view(torch.bfloat16)
        else:
            state[name] = tensor
    return state


def state_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Payload bytes of ``state`` at its tensors' own dtypes."""
    return sum(t.numel() * t.element_size() for t in state.values())

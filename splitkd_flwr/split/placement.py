"""Where a model runs: resolve `server-device` / `torch-device`, move frames there and back.

Frames arrive from the network in host memory; on an accelerator they are copied
through a pinned (page-locked) buffer with ``non_blocking=True``, so the copy is one DMA
transfer that overlaps the host's work instead of a staged, synchronous one.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from splitkd_flwr.core.constants import DEVICE_SPEC_PATTERN
from splitkd_flwr.core.errors import ConfigError

DEVICE_PATTERN = re.compile(DEVICE_SPEC_PATTERN)


def check_device_spec(spec: str, key: str) -> str:
    """Return ``spec`` if it names a placement, else raise ConfigError naming ``key``."""
    if not isinstance(spec, str) or not DEVICE_PATTERN.match(spec):
        raise ConfigError(f"{key} must be auto, cpu, cuda, cuda:N or mps, got {spec!r}")
    return spec


def resolve_device(spec: str, key: str = "server-device") -> torch.device:
    """The torch device ``spec`` names; ``auto`` is the first accelerator, else the CPU.

    Raises
    ------
    ConfigError
        ``spec`` is malformed, or names an accelerator this machine does not have.
    """
    check_device_spec(spec, key)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            raise ConfigError(
                f"{key} = {spec!r}, but this machine has {count} CUDA device(s)"
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key} = 'mps', but MPS is not available here")
    return device


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a host tensor to ``device``; via pinned memory and non-blocking to CUDA."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """Bring a tensor back to host memory (for a frame); a no-op on the CPU."""
    if tensor.device.type == "cpu":
        return tensor
    # A pinned destination lets the copy run as DMA; synchronise before the bytes are read.
    host = torch.empty(
        tensor.shape, dtype=tensor.dtype, pin_memory=tensor.device.type == "cuda"
    )
    host.copy_(tensor, non_blocking=True)
    if tensor.device.type == "cuda":
        torch.cuda.current_stream(tensor.device).synchronize()
    return host


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first materialised parameter (the CPU if none)."""
    for param in module.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")

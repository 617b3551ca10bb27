"""Split knowledge distillation in plain PyTorch + Transformers (no Flower)."""

from splitkd_flwr.split.loss import KDLoss, forward_kl, generalized_jsd, reverse_kl
from splitkd_flwr.split.models import check_pair, load_causal_lm
from splitkd_flwr.split.partition import DevicePart, ServerPart, partition
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split.step import (
    Smashed,
    device_backward,
    device_forward,
    reference_step,
    server_step,
)

__all__ = [
    "DevicePart",
    "KDLoss",
    "ServerPart",
    "Smashed",
    "SplitServer",
    "check_pair",
    "device_backward",
    "device_forward",
    "forward_kl",
    "generalized_jsd",
    "load_causal_lm",
    "partition",
    "reference_step",
    "reverse_kl",
    "server_step",
]

"""The data plane: tensors as bytes, and the per-round stream between device and server."""

from splitkd_flwr.transport.stream import (
    DataPlaneServer,
    DeviceSession,
    DeviceTLS,
    Frame,
    RoundHandle,
    RoundStats,
    ServerTLS,
    TensorSpec,
    new_token,
)

__all__ = [
    "DataPlaneServer",
    "DeviceSession",
    "DeviceTLS",
    "Frame",
    "RoundHandle",
    "RoundStats",
    "ServerTLS",
    "TensorSpec",
    "new_token",
]

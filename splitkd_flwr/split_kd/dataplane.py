"""Split KD over the data plane: frames of smashed data up, gradients down, both sides.

The glue between :mod:`splitkd_flwr.split` (the math) and :mod:`splitkd_flwr.transport`
(the bytes); neither of those knows the other, and this module knows nothing of Flower.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from splitkd_flwr.core.constants import IGNORE_INDEX
from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.hardware.monitor import HardwareMonitor
from splitkd_flwr.split.partition import DevicePart
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split.step import Smashed, device_backward, device_forward
from splitkd_flwr.transport.stream import (
    DataPlaneServer,
    DeviceSession,
    Frame,
    RoundHandle,
    TensorSpec,
)

GRAD = "grad"


@contextmanager
def _unmeasured(phase: str) -> Iterator[None]:
    yield


def smashed_spec(d_teacher: int, d_student: int) -> dict[str, TensorSpec]:
    """What every up-frame must hold: the :class:`Smashed` fields, consistent in B and T."""
    return {
        "teacher_embeds": TensorSpec(None, ("B", "T", d_teacher)),
        "student_hidden": TensorSpec(None, ("B", "T", d_student)),
        "attention_mask": TensorSpec(None, ("B", "T")),
        "labels": TensorSpec(torch.int64, ("B", "T")),
    }


@dataclass
class _Tally:
    frames: int = 0
    tokens: int = 0
    loss_sum: float = 0.0
    terms_sum: dict[str, float] = field(default_factory=dict)
    server_compute_s: float = 0.0

    def add(
        self, loss: float, terms: Mapping[str, float], tokens: int, seconds: float
    ) -> None:
        self.frames += 1
        self.tokens += tokens
        self.loss_sum += loss
        for key, value in terms.items():
            self.terms_sum[key] = self.terms_sum.get(key, 0.0) + value
        self.server_compute_s += seconds


class RoundInProgress:
    """One open round on the data plane: the server's step runs on each arriving frame."""

    def __init__(self, handle: RoundHandle, tally: _Tally) -> None:
        self.handle = handle
        self.tally = tally

    def failed(self) -> bool:
        """Whether the stream has already ended in an error."""
        return self.handle.error is not None

    def finish(self, timeout_s: float = 10.0) -> dict[str, float]:
        """Wait for the clean end of the stream and return the round's measured figures.

        Raises ``TransportError`` if the stream failed or did not end cleanly.
        """
        stats = self.handle.wait(timeout_s)
        if self.handle.error is not None:
            raise TransportError(f"data plane: {self.handle.error}")
        if self.tally.frames == 0:
            raise TransportError("data plane: the device sent no mini-batch")
        n = self.tally.frames
        return {
            "train-loss": self.tally.loss_sum / n,
            **{f"train-{k}": v / n for k, v in self.tally.terms_sum.items()},
            "batches": n,
            "tokens": self.tally.tokens,
            "measured-bytes-up": stats.bytes_up,
            "measured-bytes-down": stats.bytes_down,
            "measured-server-compute-s": self.tally.server_compute_s,
        }

    def close(self) -> None:
        """Release the round (idempotent)."""
        self.handle.close()


class DataPlane:
    """The server's data-plane endpoint, serving one split round at a time."""

    def __init__(
        self,
        server: DataPlaneServer,
        address: str,
        wire_dtype: str = "fp32",
        root_cert_pem: str = "",
    ) -> None:
        self.server = server
        self.address = address
        self.wire_dtype = wire_dtype
        # Devices learn which certificate to trust from the round plan, which reaches them
        # over Flower's own (TLS) control plane: no second key distribution.
        self.root_cert_pem = root_cert_pem

    def open_round(
        self,
        token: str,
        split_server: SplitServer,
        cut_layer: int,
        monitor: HardwareMonitor | None = None,
    ) -> RoundInProgress:
        """Accept ``token`` for one round whose frames drive ``split_server`` at ``cut_layer``.

        With a ``monitor``, each server step is measured as the ``server-compute`` phase.
        """
        measure = monitor.measure if monitor is not None else _unmeasured
        split_server.begin_round(cut_layer)
        spec = smashed_spec(*split_server.expected_widths)
        tally = _Tally()

        def on_frame(frame: Frame) -> Frame:
            smashed = Smashed(**{name: frame[name] for name in spec})
            started = time.perf_counter()
            with measure("server-compute"):
                result = split_server.step(smashed)
            tokens = int((smashed.labels != IGNORE_INDEX).sum())
            tally.add(result.loss, result.terms, tokens, time.perf_counter() - started)
            return Frame({GRAD: result.grad_at_cut}, {"loss": result.loss})

        handle = self.server.open_round(
            token, on_frame, spec=spec, wire_dtype=self.wire_dtype
        )
        return RoundInProgress(handle, tally)


def run_device_round(
    session: DeviceSession,
    device_part: DevicePart,
    batches: Iterable[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
) -> dict[str, float]:
    """The device's side of a round: per mini-batch, forward, exchange, backward, step.

    Returns the device's measured figures (compute and exchange wall time, batches).
    """
    compute_s = exchange_s = 0.0
    batches_done = 0
    for batch in batches:
        started = time.perf_counter()
        smashed, hidden = device_forward(
            device_part, batch["input_ids"], batch["attention_mask"]
        )
        sent = time.perf_counter()
        reply = session.exchange(Frame(smashed.tensors()))
        received = time.perf_counter()
        grad = reply[GRAD]
        if grad.shape != hidden.shape:
            raise TransportError(
                f"gradient frame has shape {tuple(grad.shape)}, expected {tuple(hidden.shape)}"
            )
        device_backward(hidden, grad, optimizer)
        compute_s += (sent - started) + (time.perf_counter() - received)
        exchange_s += received - sent
        batches_done += 1
    return {
        "measured-device-compute-s": compute_s,
        "measured-exchange-s": exchange_s,
        "device-batches": batches_done,
    }

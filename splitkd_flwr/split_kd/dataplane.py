"""Split KD over the data plane: frames of smashed data up, gradients down, both sides.

The glue between :mod:`splitkd_flwr.split` (the math) and :mod:`splitkd_flwr.transport`
(the bytes); neither of those knows the other, and this module knows nothing of Flower.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from splitkd_flwr.core.constants import IGNORE_INDEX
from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.hardware.monitor import HardwareMonitor
from splitkd_flwr.split.cluster import ClusterServer
from splitkd_flwr.split.noise import noiser
from splitkd_flwr.split.partition import DevicePart
from splitkd_flwr.split.placement import module_device, to_device, to_host
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split.step import Smashed, device_backward, device_forward
from splitkd_flwr.split.ushape import UShapeServer
from splitkd_flwr.split_kd.ushape_plane import ushape_on_frame
from splitkd_flwr.transport.frame import Dim
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


# Floating dtypes a device may send (the server casts them to its models' dtypes).
SMASHED_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# Per frame: header, meta and alignment padding, far above what four tensors need.
_FRAME_SLACK_BYTES = 64 * 1024


def _mask_values(mask: torch.Tensor) -> str | None:
    if bool(((mask == 0) | (mask == 1)).all()):
        return None
    return f"attention mask values must be 0 or 1, got {sorted(mask.unique().tolist())[:8]}"


def _label_values(vocab_size: int):
    def check(labels: torch.Tensor) -> str | None:
        ok = (labels == IGNORE_INDEX) | ((labels >= 0) & (labels < vocab_size))
        if bool(ok.all()):
            return None
        bad = labels[~ok]
        return (
            f"labels must be token ids in [0, {vocab_size}) or {IGNORE_INDEX}, "
            f"got {int(bad.min())}..{int(bad.max())}"
        )

    return check


def smashed_spec(
    d_teacher: int,
    d_student: int,
    max_batch: int | None = None,
    max_seq_len: int | None = None,
    vocab_size: int | None = None,
) -> dict[str, TensorSpec]:
    """What every up-frame must hold: the :class:`Smashed` fields, consistent in B and T.

    With the round plan's ``max_batch`` and ``max_seq_len`` a frame holds at most that
    many sequences and tokens per sequence, so no device can ask for more server compute
    than the plan allows. The embeddings must be fp32/fp16/bf16, the mask and labels
    int64; the mask must be 0/1 and the labels token ids (< ``vocab_size``) or -100.
    """
    batch = "B" if max_batch is None else Dim("B", max_batch, "batch-size")
    seq = "T" if max_seq_len is None else Dim("T", max_seq_len, "seq-len")
    labels = _label_values(vocab_size) if vocab_size is not None else None
    return {
        "teacher_embeds": TensorSpec(SMASHED_FLOATS, (batch, seq, d_teacher)),
        "student_hidden": TensorSpec(SMASHED_FLOATS, (batch, seq, d_student)),
        "attention_mask": TensorSpec(torch.int64, (batch, seq), _mask_values),
        "labels": TensorSpec(torch.int64, (batch, seq), labels),
    }


def max_smashed_bytes(
    d_teacher: int, d_student: int, max_batch: int, max_seq_len: int
) -> int:
    """The largest encoded frame `smashed_spec` admits (fp32 embeddings), plus slack."""
    tokens = max_batch * max_seq_len
    return tokens * (4 * (d_teacher + d_student) + 2 * 8) + _FRAME_SLACK_BYTES


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

    def connected(self) -> bool:
        """Whether the device ever opened this round's stream."""
        return self.handle.connected

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


def round_limits(
    server: SplitServer | ClusterServer,
    max_batch: int | None,
    max_seq_len: int | None,
) -> tuple[dict[str, TensorSpec], int | None]:
    """The up-frame spec of a round on ``server`` and its frame-size limit (None: none)."""
    widths = server.expected_widths
    spec = smashed_spec(
        *widths, max_batch, max_seq_len, server.student.config.vocab_size
    )
    max_bytes = None
    if max_batch is not None and max_seq_len is not None:
        max_bytes = max_smashed_bytes(*widths, max_batch, max_seq_len)
    return spec, max_bytes


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
        # Sees every decoded up-frame and the answer to it (the privacy audit's capture).
        self.observer: Callable[[Frame, Frame], None] | None = None

    def open_round(
        self,
        token: str,
        split_server: SplitServer,
        cut_layer: int,
        monitor: HardwareMonitor | None = None,
        *,
        max_batch: int | None = None,
        max_seq_len: int | None = None,
    ) -> RoundInProgress:
        """Accept ``token`` for one round whose frames drive ``split_server`` at ``cut_layer``.

        With a ``monitor``, each server step is measured as the ``server-compute`` phase.
        ``max_batch`` and ``max_seq_len`` (the round plan's ``batch-size``, ``seq-len``)
        bound every frame; a frame beyond them is refused before its bytes are buffered
        (a frame-size limit follows from them) and before any server compute.
        """
        measure = monitor.measure if monitor is not None else _unmeasured
        spec, max_bytes = round_limits(split_server, max_batch, max_seq_len)
        split_server.begin_round(cut_layer)
        tally = _Tally()

        def on_frame(frame: Frame) -> Frame:
            smashed = Smashed(**{name: frame[name] for name in spec})
            started = time.perf_counter()
            with measure("server-compute"):
                result = split_server.step(smashed)
            tokens = int((smashed.labels != IGNORE_INDEX).sum())
            tally.add(result.loss, result.terms, tokens, time.perf_counter() - started)
            return Frame({GRAD: result.grad_at_cut}, {"loss": result.loss})

        if isinstance(split_server, UShapeServer):
            # Two up-frames per step of two kinds: the handler checks each against its own.
            on_frame, spec = ushape_on_frame(split_server, tally.add, measure), None
        handle = self.server.open_round(
            token,
            self._observed(on_frame),
            spec=spec,
            wire_dtype=self.wire_dtype,
            max_frame_bytes=max_bytes,
        )
        return RoundInProgress(handle, tally)

    def _observed(self, on_frame: Callable[[Frame], Frame]) -> Callable[[Frame], Frame]:
        observer = self.observer
        if observer is None:
            return on_frame

        def observed(frame: Frame) -> Frame:
            answer = on_frame(frame)
            observer(frame, answer)
            return answer

        return observed


def run_device_round(
    session: DeviceSession,
    device_part: DevicePart,
    batches: Iterable[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    autocast_dtype: torch.dtype | None = None,
    noise_epsilon: float = 0.0,
) -> dict[str, float]:
    """The device's side of a round: per mini-batch, forward, exchange, backward, step.

    The part runs where its weights are (a Jetson's CUDA); frames leave and arrive in
    host memory. Returns the device's measured figures (compute and exchange wall time,
    batches). With ``noise_epsilon`` the smashed activations get d_chi-privacy noise
    before they leave (:mod:`splitkd_flwr.split.noise`).
    """
    privatize = noiser(noise_epsilon)
    device = module_device(device_part)
    compute_s = exchange_s = 0.0
    batches_done = 0
    for batch in batches:
        started = time.perf_counter()
        smashed, hidden = device_forward(
            device_part,
            to_device(batch["input_ids"], device),
            to_device(batch["attention_mask"], device),
            autocast_dtype,
        )
        frame = Frame(privatize({k: to_host(v) for k, v in smashed.tensors().items()}))
        sent = time.perf_counter()
        reply = session.exchange(frame)
        received = time.perf_counter()
        grad = to_device(reply[GRAD], device)
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

"""The u-shape over the data plane: two exchanges per mini-batch, labels kept on the device.

Per mini-batch the device sends ``teacher_embeds``, ``student_hidden`` and
``attention_mask`` and gets back ``student_top`` and the teacher's soft labels; it
computes the loss with its own labels and sends ``grad_top`` (its batch loss and terms
ride along as frame scalars, for the server's per-round figures); it gets back ``grad``,
the gradient at the cut. Nothing that goes up holds a label or a token id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager

import torch

from splitkd_flwr.core.errors import TransportError
from splitkd_flwr.split.noise import noiser
from splitkd_flwr.split.partition import DevicePart, StudentSegment
from splitkd_flwr.split.step import LossFn, make_labels
from splitkd_flwr.split.ushape import (
    PendingTop,
    UShapeServer,
    ushape_device_backward,
    ushape_device_forward,
    ushape_device_loss,
)
from splitkd_flwr.transport.frame import Frame, TensorSpec, check_spec

GRAD = "grad"
GRAD_TOP = "grad_top"


def ushape_specs(d_teacher: int, d_student: int) -> tuple[dict, dict]:
    """What the two up-frames of a step must hold (forward, then backward)."""
    forward = {
        "teacher_embeds": TensorSpec(None, ("B", "T", d_teacher)),
        "student_hidden": TensorSpec(None, ("B", "T", d_student)),
        "attention_mask": TensorSpec(None, ("B", "T")),
    }
    return forward, {GRAD_TOP: TensorSpec(None, ("B", "T", d_student))}


def ushape_on_frame(
    server: UShapeServer,
    tally_add: Callable[[float, Mapping[str, float], int, float], None],
    measure: Callable[[str], AbstractContextManager[None]],
) -> Callable[[Frame], Frame]:
    """The server's frame handler for one u-shape round (frames alternate: fwd, bwd)."""
    forward_spec, backward_spec = ushape_specs(*server.expected_widths)
    state: dict[str, object] = {}

    def on_frame(frame: Frame) -> Frame:
        started = time.perf_counter()
        pending = state.pop("pending", None)
        if pending is None:
            check_spec(frame, forward_spec)
            with measure("server-compute"):
                state["pending"], down = server.forward(frame.tensors)
            state["mask"] = frame["attention_mask"]
            state["seconds"] = time.perf_counter() - started
            return Frame(down)
        assert isinstance(pending, PendingTop)
        check_spec(frame, backward_spec)
        if frame[GRAD_TOP].shape != pending.top.shape:
            raise TransportError(
                f"grad_top has shape {tuple(frame[GRAD_TOP].shape)}, "
                f"expected {tuple(pending.top.shape)}"
            )
        with measure("server-compute"):
            grad = server.backward(pending, frame[GRAD_TOP])
        mask = state.pop("mask")
        assert isinstance(mask, torch.Tensor)
        # Positions with a next-token target: what the device's loss averages over.
        tokens = int((mask[:, :-1].bool() & mask[:, 1:].bool()).sum())
        meta = {k: float(v) for k, v in frame.meta.items() if isinstance(v, float)}
        loss = meta.pop("loss", float("nan"))
        seconds = float(state.pop("seconds")) + time.perf_counter() - started
        tally_add(loss, meta, tokens, seconds)
        return Frame({GRAD: grad}, {"loss": loss})

    return on_frame


def run_device_round_ushape(
    session: object,
    device_part: DevicePart,
    head: StudentSegment,
    batches: Iterable[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    noise_epsilon: float = 0.0,
) -> dict[str, float]:
    """The device's side of a u-shape round; ``optimizer`` holds bottom and head."""
    privatize = noiser(noise_epsilon)
    compute_s = exchange_s = 0.0
    batches_done = 0
    for batch in batches:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        t0 = time.perf_counter()
        up, hidden = ushape_device_forward(device_part, ids, mask)
        t1 = time.perf_counter()
        down = session.exchange(Frame(privatize(up)))  # type: ignore[attr-defined]
        t2 = time.perf_counter()
        grad_top, loss, terms = ushape_device_loss(
            head, down.tensors, make_labels(ids, mask), mask, loss_fn, optimizer
        )
        t3 = time.perf_counter()
        reply = session.exchange(  # type: ignore[attr-defined]
            Frame({GRAD_TOP: grad_top}, {"loss": loss, **terms})
        )
        t4 = time.perf_counter()
        if reply[GRAD].shape != hidden.shape:
            raise TransportError(
                f"gradient frame has shape {tuple(reply[GRAD].shape)}, "
                f"expected {tuple(hidden.shape)}"
            )
        ushape_device_backward(hidden, reply[GRAD], optimizer)
        compute_s += (t1 - t0) + (t3 - t2) + (time.perf_counter() - t4)
        exchange_s += (t2 - t1) + (t4 - t3)
        batches_done += 1
    return {
        "measured-device-compute-s": compute_s,
        "measured-exchange-s": exchange_s,
        "device-batches": batches_done,
    }

"""The label-private U-shaped split step: the student's head, the loss and the labels stay on the device.

One step, as two exchanges across the network::

    up_1, hidden = ushape_device_forward(device_part, input_ids, mask)   # -> server
    pending, down_1 = ushape_server_forward(server_part, up_1, top_k, T)   # -> device
    grad_top, loss, terms = ushape_device_loss(head, down_1, labels, mask, loss_fn, dev_opt)
    grad_at_cut = ushape_server_backward(pending, grad_top, server_optimizer)  # -> device
    ushape_device_backward(hidden, grad_at_cut, dev_opt)

The server sees the teacher's input embeddings, the student hidden state at the cut, the
attention mask and the gradient at the top of its blocks; never the labels or the ids.
It returns the student's hidden state after its blocks and the teacher's soft labels
(the full logits, or the top-k log-probs, their ids and the tail mass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from splitkd_flwr.core.errors import ModelError, SplitKDError
from splitkd_flwr.split.loss import TopKTeacher, topk_teacher
from splitkd_flwr.split.models import check_cut_layer, num_layers
from splitkd_flwr.split.partition import (
    DevicePart,
    ServerPart,
    StudentSegment,
    check_weights,
    partition,
)
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split.step import LossFn, _check_finite, _unpack_loss

# Names of the tensors in each direction (the data plane's frames use them as is).
UP_FORWARD = ("teacher_embeds", "student_hidden", "attention_mask")
UP_BACKWARD = ("grad_top",)
TOP = "student_top"
FULL_TEACHER = ("teacher_logits",)
TOPK_TEACHER = ("teacher_logprobs", "teacher_ids", "teacher_tail")


def ushape_partition(
    teacher: PreTrainedModel, student: PreTrainedModel, cut_layer: int
) -> tuple[DevicePart, ServerPart, StudentSegment]:
    """Split a pair into the device's bottom, the server's middle and the device's head.

    The server part holds the teacher and the student blocks ``[c, L)`` without the
    final norm and LM head (its "logits" are the hidden state after the last block); the
    head segment ``[L, L)`` holds the final norm and the LM head, on the device.
    """
    device, middle = partition(teacher, student, cut_layer, server_head=False)
    return device, middle, ushape_head(student)


def ushape_head(student: PreTrainedModel) -> StudentSegment:
    """The device's head segment ``[L, L)``: the final norm and the LM head."""
    top = num_layers(student)
    return StudentSegment(student, top, top, embed=False, head=True)


class DeviceModules(nn.Module):
    """What a u-shape device trains and returns: its bottom segment and its head."""

    def __init__(self, *segments: StudentSegment) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)

    def student_state_dict(self) -> dict[str, Tensor]:
        """The segments' weights under the student's own keys."""
        return {k: v for s in self.segments for k, v in s.student_state_dict().items()}

    def load_student_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load exactly these segments' weights (``ModelError`` on any mismatch)."""
        check_weights(self.student_state_dict(), state, "u-shape device weights")
        for segment in self.segments:
            own = segment.student_state_dict()
            segment.load_student_state_dict({k: state[k] for k in own})


def ushape_device_names(student: PreTrainedModel, cut_layer: int) -> list[str]:
    """The student's state_dict keys a u-shape device trains: embeddings, blocks < c, head."""
    check_cut_layer(cut_layer, num_layers(student))
    lower = StudentSegment(student, 0, cut_layer, embed=True, head=False)
    return [*lower.student_state_dict(), *ushape_head(student).student_state_dict()]


def ushape_server_names(student: PreTrainedModel, cut_layer: int) -> list[str]:
    """The student's state_dict keys the u-shape server trains: blocks ``[c, L)``."""
    check_cut_layer(cut_layer, num_layers(student))
    middle = StudentSegment(
        student, cut_layer, num_layers(student), embed=False, head=False
    )
    return list(middle.student_state_dict())


def ushape_device_forward(
    device_part: DevicePart, input_ids: Tensor, attention_mask: Tensor
) -> tuple[dict[str, Tensor], Tensor]:
    """Run the device's bottom; return what goes up (no labels, no ids) and the graph."""
    device_part.train()
    teacher_embeds, hidden = device_part(input_ids, attention_mask)
    up = {
        "teacher_embeds": teacher_embeds.detach(),
        "student_hidden": hidden.detach(),
        "attention_mask": attention_mask,
    }
    return up, hidden


@dataclass
class PendingTop:
    """The server's graph between its forward and the device's gradient at the top."""

    hidden: Tensor  # (B, T, d_s) leaf at the cut
    top: Tensor  # (B, T, d_s) student hidden after the server's blocks, with its graph


def teacher_soft_labels(
    teacher_logits: Tensor, top_k: int, temperature: float
) -> dict[str, Tensor]:
    """The teacher's output as it goes down: full logits (``top_k = 0``) or top-k + tail."""
    if top_k == 0:
        return {"teacher_logits": teacher_logits.detach()}
    topk = topk_teacher(teacher_logits, top_k, temperature)
    return {
        "teacher_logprobs": topk.logprobs,
        "teacher_ids": topk.ids,
        "teacher_tail": topk.tail_logprob,
    }


def teacher_from_frame(down: Mapping[str, Tensor]) -> Tensor | TopKTeacher:
    """Rebuild what the loss takes as the teacher from a down-frame's tensors."""
    if "teacher_logits" in down:
        return down["teacher_logits"]
    try:
        return TopKTeacher(
            down["teacher_logprobs"], down["teacher_ids"], down["teacher_tail"]
        )
    except KeyError as err:
        raise ModelError(f"u-shape reply lacks the teacher's {err}") from err


def ushape_server_forward(
    server_part: ServerPart,
    up: Mapping[str, Tensor],
    top_k: int,
    temperature: float,
) -> tuple[PendingTop, dict[str, Tensor]]:
    """Run the server's student blocks and the whole teacher; return what goes down."""
    server_part.train()
    hidden = up["student_hidden"].detach().requires_grad_(True)  # (B, T, d_s)
    top, teacher_logits = server_part(
        up["teacher_embeds"], hidden, up["attention_mask"]
    )  # (B, T, d_s), (B, T, V)
    down = {
        TOP: top.detach(),
        **teacher_soft_labels(teacher_logits, top_k, temperature),
    }
    return PendingTop(hidden, top), down


def ushape_device_loss(
    head: StudentSegment,
    down: Mapping[str, Tensor],
    labels: Tensor,
    attention_mask: Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
) -> tuple[Tensor, float, dict[str, float]]:
    """Finish the student on the device and compute the loss with the local labels.

    Zeroes ``optimizer`` (the device's: bottom and head), leaves the head's gradients in
    it for :func:`ushape_device_backward`, and returns ``(grad_top, loss, terms)``.
    """
    optimizer.zero_grad(set_to_none=True)
    head.train()
    dtype = next(head.parameters()).dtype
    top = down[TOP].detach().to(dtype).requires_grad_(True)  # (B, T, d_s)
    logits = head(top, attention_mask)  # (B, T, V)
    loss, terms = _unpack_loss(loss_fn(logits, teacher_from_frame(down), labels))
    loss.backward()
    _check_finite(loss, top.grad)
    return top.grad, loss.item(), terms


def ushape_server_backward(
    pending: PendingTop, grad_top: Tensor, optimizer: torch.optim.Optimizer
) -> Tensor:
    """Backpropagate the device's gradient through the server's blocks; step; grad at cut."""
    optimizer.zero_grad(set_to_none=True)
    pending.top.backward(grad_top.to(pending.top.dtype))
    if not torch.isfinite(pending.hidden.grad).all():
        raise SplitKDError("Non-finite gradient at the cut in a u-shape step.")
    optimizer.step()
    return pending.hidden.grad


def ushape_device_backward(
    hidden: Tensor, grad_at_cut: Tensor, optimizer: torch.optim.Optimizer
) -> None:
    """Backpropagate the gradient at the cut through the bottom; step bottom and head."""
    hidden.backward(grad_at_cut.to(hidden.dtype))
    optimizer.step()


class UShapeServer(SplitServer):
    """A :class:`SplitServer` for the u-shape: it trains blocks ``[c, L)`` only.

    The device trains (and returns) the embeddings, the blocks below the cut, the final
    norm and the LM head; the server's loss is the device's, arriving as ``grad_top``.
    With ``private_layers = m`` the embeddings and blocks < m are trained but never sent
    or returned (as in :class:`SplitServer`).
    """

    def __init__(
        self,
        teacher: PreTrainedModel,
        student: PreTrainedModel,
        loss_fn: LossFn,
        lr: float,
        *,
        top_k: int = 0,
        temperature: float = 1.0,
        private_layers: int = 0,
    ) -> None:
        super().__init__(teacher, student, loss_fn, lr, private_layers=private_layers)
        self.top_k = top_k
        self.temperature = temperature

    def device_side_names(self, cut_layer: int) -> list[str]:
        """Embeddings, blocks below the cut, final norm and LM head."""
        return ushape_device_names(self.student, cut_layer)

    def server_names(self, cut_layer: int) -> list[str]:
        """Blocks ``[c, L)``."""
        return ushape_server_names(self.student, cut_layer)

    def _server_part(self, cut_layer: int) -> ServerPart:
        return ushape_partition(self.teacher, self.student, cut_layer)[1]

    def forward(self, up: Mapping[str, Tensor]) -> tuple[PendingTop, dict[str, Tensor]]:
        """The server's half of a step's first exchange (see the module docstring)."""
        if self._part is None:
            raise ModelError("UShapeServer.forward called outside a round")
        return ushape_server_forward(self._part, up, self.top_k, self.temperature)

    def backward(self, pending: PendingTop, grad_top: Tensor) -> Tensor:
        """The server's half of the second exchange: step, return the gradient at the cut."""
        return ushape_server_backward(pending, grad_top, self.optimizer)

    def step(self, smashed: object) -> None:
        """Refuse the seed mode's one-exchange step: a u-shape step has two."""
        raise ModelError("a u-shape round takes forward/backward, not step")

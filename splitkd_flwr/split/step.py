"""One split KD step (device forward, server step, device backward); the unsplit step.

In one process the three calls of a split step read::

    smashed, hidden = device_forward(device_part, input_ids, attention_mask)
    result = server_step(server_part, smashed, server_optimizer, loss_fn)
    device_backward(hidden, result.grad_at_cut, device_optimizer)

Across a network, ``smashed`` travels up and ``result.grad_at_cut`` travels down;
``hidden`` never leaves the device (it carries the device's autograd graph).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from splitkd_flwr.core.errors import SplitKDError
from splitkd_flwr.split.adapters import position_ids_from_mask
from splitkd_flwr.split.loss import IGNORE_INDEX
from splitkd_flwr.split.partition import DevicePart, ServerPart
from splitkd_flwr.split.placement import module_device
from splitkd_flwr.split.precision import autocast

# loss_fn(student_logits (B,T,V), teacher_logits (B,T,V), labels (B,T)) -> the loss,
# or a NamedTuple / mapping whose "loss" entry is it and whose other entries are terms.
LossFn = Callable[[Tensor, Tensor, Tensor], Any]


@dataclass
class Smashed:
    """What a device sends per mini-batch: what the server needs, no graph."""

    teacher_embeds: Tensor  # (B, T, d_t) teacher input-embedding output
    student_hidden: Tensor  # (B, T, d_s) student hidden state at the cut, detached
    attention_mask: Tensor  # (B, T) 1 on real tokens, 0 on padding
    labels: Tensor  # (B, T) next-token targets, IGNORE_INDEX where there is none

    def tensors(self) -> dict[str, Tensor]:
        """Return the fields by name (for a codec)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def num_bytes(self) -> int:
        """Return the payload size in bytes at the tensors' own dtypes."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


@dataclass
class StepResult:
    """The loss of one step and its named terms (e.g. ``ce``, ``kd``), as floats."""

    loss: float
    terms: dict[str, float] = field(default_factory=dict)


@dataclass
class ServerStepResult:
    """A server step's loss, its terms, and the gradient to send back to the device."""

    loss: float
    grad_at_cut: Tensor  # (B, T, d_s) d loss / d student_hidden
    terms: dict[str, float] = field(default_factory=dict)


def make_labels(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Return next-token targets aligned with the logits of each position.

    ``labels[:, t] = input_ids[:, t + 1]``; ``IGNORE_INDEX`` at the last position and
    wherever the position or its next token is padding.
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)  # (B, T)
    labels[:, :-1] = input_ids[:, 1:]
    real = attention_mask.bool()  # (B, T)
    has_target = torch.zeros_like(real)
    has_target[:, :-1] = real[:, :-1] & real[:, 1:]
    return labels.masked_fill(~has_target, IGNORE_INDEX)


def device_forward(
    device_part: DevicePart,
    input_ids: Tensor,
    attention_mask: Tensor,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Smashed, Tensor]:
    """Run the device part on one mini-batch (under autocast to ``autocast_dtype``, if any).

    Returns
    -------
    tuple[Smashed, Tensor]
        The smashed data to send (detached) and the student hidden state at the cut
        ``(B, T, d_s)`` with its graph, to keep for ``device_backward``.
    """
    device_part.train()
    with autocast(module_device(device_part), autocast_dtype):
        teacher_embeds, hidden = device_part(
            input_ids, attention_mask
        )  # (B,T,dt) (B,T,ds)
    smashed = Smashed(
        teacher_embeds=teacher_embeds.detach(),
        student_hidden=hidden.detach(),
        attention_mask=attention_mask,
        labels=make_labels(input_ids, attention_mask),
    )
    return smashed, hidden


def server_step(
    server_part: ServerPart,
    smashed: Smashed,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    autocast_dtype: torch.dtype | None = None,
) -> ServerStepResult:
    """Finish both models, step the server-side student, return the gradient at the cut.

    The teacher runs without a graph; ``optimizer`` holds the server-side student
    parameters (``server_part.student_parameters()``). With ``autocast_dtype`` the
    forward runs under autocast; the loss upcasts to fp32, backward runs outside it.
    """
    server_part.train()
    # A fresh leaf: the server's graph ends at the cut; its gradient is what goes back.
    hidden = smashed.student_hidden.detach().requires_grad_(True)  # (B, T, d_s)
    with autocast(hidden.device, autocast_dtype):
        # (B, T, V), (B, T, V)
        student_logits, teacher_logits = server_part(
            smashed.teacher_embeds, hidden, smashed.attention_mask
        )
        out = loss_fn(student_logits, teacher_logits, smashed.labels)
    loss, terms = _unpack_loss(out)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _check_finite(loss, hidden.grad)
    optimizer.step()
    return ServerStepResult(loss=loss.item(), terms=terms, grad_at_cut=hidden.grad)


def device_backward(
    student_hidden: Tensor, grad_at_cut: Tensor, optimizer: torch.optim.Optimizer
) -> None:
    """Backpropagate the server's gradient through the device part; step its optimizer.

    Parameters
    ----------
    student_hidden : Tensor
        ``(B, T, d_s)`` as returned by ``device_forward`` (with its graph).
    grad_at_cut : Tensor
        ``(B, T, d_s)`` from ``server_step``, in any float dtype.
    optimizer : torch.optim.Optimizer
        Holds the device-side student parameters (``device_part.student_parameters()``).
    """
    optimizer.zero_grad(set_to_none=True)
    student_hidden.backward(grad_at_cut.to(student_hidden.dtype))
    optimizer.step()


def reference_step(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    autocast_dtype: torch.dtype | None = None,
) -> StepResult:
    """Take the unsplit KD step on the whole models (what a split step must equal)."""
    teacher.eval()
    student.train()
    position_ids = position_ids_from_mask(attention_mask)  # (B, T)
    labels = make_labels(input_ids, attention_mask)  # (B, T)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "use_cache": False,
    }
    with autocast(input_ids.device, autocast_dtype):
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits  # (B, T, V)
        student_logits = student(**inputs).logits  # (B, T, V)
        out = loss_fn(student_logits, teacher_logits, labels)
    loss, terms = _unpack_loss(out)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _check_finite(loss)
    optimizer.step()
    return StepResult(loss=loss.item(), terms=terms)


def _unpack_loss(out: Any) -> tuple[Tensor, dict[str, float]]:
    """Split a loss_fn result into the loss to backpropagate and its logged terms."""
    if isinstance(out, Tensor):
        return out, {}
    if hasattr(out, "_asdict"):  # a NamedTuple such as loss.LossTerms
        out = out._asdict()
    if isinstance(out, Mapping) and "loss" in out:
        terms = {k: float(torch.as_tensor(v).detach()) for k, v in out.items()}
        del terms["loss"]
        return out["loss"], terms
    raise SplitKDError(
        f"loss_fn returned {type(out).__name__}; expected a Tensor, or a NamedTuple or "
        "mapping with a 'loss' entry."
    )


def _check_finite(loss: Tensor, grad: Tensor | None = None) -> None:
    """Fail before the optimizer step on NaN/inf, so no weight is poisoned."""
    if not torch.isfinite(loss):
        raise SplitKDError(f"Non-finite loss {loss.item()} in a KD step.")
    if grad is not None and not torch.isfinite(grad).all():
        raise SplitKDError("Non-finite gradient at the cut in a KD step.")

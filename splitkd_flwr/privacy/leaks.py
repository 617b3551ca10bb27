"""Leaks in gradients and weight uploads: labels from the u-shape's top gradient, token types.

Labels from ``grad_top``. In the u-shape the device computes
``alpha * CE(labels) + (1 - alpha) * T^2 * KD`` on its head and sends the gradient at
the top of the server's blocks. The server knows everything in that loss but the labels:
the hidden state (it computed it), the teacher's soft labels (it sent them), the head
(it sent it; the replay below keeps it current) and the loss's settings (the run
config). The CE term's gradient in logit space is ``alpha / N * (p - e_y)``; with a
placeholder label 0 the server computes the rest exactly, and the difference at the top
is ``alpha / N * J^T (W[0] - W[y])`` with ``J`` the final norm's Jacobian and ``W`` the
head: a search over ``y``.

Token types from the upload. The device's AdamW leaves an embedding row that no token
used exactly where weight decay alone puts it; the server knows the decay, the rate and
the number of steps, so the rows that moved otherwise are the token types the device saw.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from splitkd_flwr.core.constants import IGNORE_INDEX
from splitkd_flwr.split.partition import StudentSegment
from splitkd_flwr.split.step import LossFn, _unpack_loss, make_labels
from splitkd_flwr.split.ushape import teacher_from_frame

_CHUNK = 64
# torch.optim.AdamW's default, which the device's optimizer uses
ADAMW_WEIGHT_DECAY = 0.01


def labels_from_top_gradient(
    head: StudentSegment,
    step: Mapping[str, Tensor],
    loss_fn: LossFn,
    alpha: float,
) -> Tensor:
    """Recover the device's labels ``(B, T)`` (-100 where none) from one u-shape step."""
    mask = step["attention_mask"]
    has_target = make_labels(torch.zeros_like(mask), mask) != IGNORE_INDEX  # (B, T)
    placeholder = torch.zeros_like(mask).masked_fill(~has_target, IGNORE_INDEX)
    top = step["student_top"].detach().float().requires_grad_(True)
    logits = head(top, mask)
    loss, _ = _unpack_loss(loss_fn(logits, teacher_from_frame(step), placeholder))
    (known,) = torch.autograd.grad(loss, top)
    residual = (step["grad_top"].float() - known)[has_target]  # (N, d)
    hidden = top.detach()[has_target]  # (N, d)
    scale = alpha / max(int(has_target.sum()), 1)
    weight = head.lm_head.weight.detach().float()  # (V, d)
    jacobians = vmap(jacrev(head.norm))(hidden)  # (N, d_out, d_in)
    guesses = []
    for j, r in zip(jacobians.split(_CHUNK), residual.split(_CHUNK), strict=True):
        pulled = torch.einsum("noi,vo->nvi", j, weight)  # (n, V, d): J^T W[v]
        predicted = scale * (pulled[:, :1] - pulled)  # (n, V, d)
        guesses.append((predicted - r[:, None]).norm(dim=-1).argmin(-1))
    labels = torch.full_like(mask, IGNORE_INDEX)
    labels[has_target] = torch.cat(guesses)
    return labels


def replay_head(
    head: StudentSegment,
    steps: list[Mapping[str, Tensor]],
    loss_fn: LossFn,
    alpha: float,
    lr: float,
) -> list[Tensor]:
    """Recover each step's labels, then step the server's copy of the head as the device did."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    recovered = []
    for step in steps:
        labels = labels_from_top_gradient(head, step, loss_fn, alpha)
        recovered.append(labels)
        optimizer.zero_grad(set_to_none=True)
        logits = head(step["student_top"].float(), step["attention_mask"])
        loss, _ = _unpack_loss(loss_fn(logits, teacher_from_frame(step), labels))
        loss.backward()
        optimizer.step()
    return recovered


def moved_rows(
    sent: Tensor,
    returned: Tensor,
    num_steps: int,
    lr: float,
    weight_decay: float = ADAMW_WEIGHT_DECAY,
) -> Tensor:
    """Rows of an embedding table that moved beyond weight decay: ``(V,)`` bool."""
    decayed = sent.clone()
    for _ in range(num_steps):
        decayed.mul_(1 - lr * weight_decay)
    return (returned != decayed).any(-1)


def set_recall_precision(guess: Tensor, truth: Tensor) -> tuple[float, float]:
    """Recall and precision of a guessed set of token types (bool masks over the vocabulary)."""
    hits = int((guess & truth).sum())
    return hits / max(int(truth.sum()), 1), hits / max(int(guess.sum()), 1)

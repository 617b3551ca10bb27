"""One captured split round, as the server saw it, with the device's text to score against."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class FrameExchange:
    """One data-plane exchange: the up-frame the server decoded and its answer."""

    up: dict[str, Tensor]
    down: dict[str, Tensor]
    up_meta: dict[str, object] = field(default_factory=dict)


@dataclass
class RoundCapture:
    """Everything that crossed in one round, and (for scoring only) the device's batches.

    ``sent_weights`` are the student tensors of the ``train`` message, ``returned_weights``
    those of the reply; ``exchanges`` are the data-plane frames in order; ``truth`` the
    device's mini-batches (``input_ids``, ``attention_mask``), one per step.
    """

    split_mode: str
    cut_layer: int
    device_lr: float
    sent_weights: dict[str, Tensor]
    returned_weights: dict[str, Tensor]
    exchanges: list[FrameExchange]
    truth: list[dict[str, Tensor]]
    message_tensors: dict[str, Tensor] = field(default_factory=dict)

    def steps(self) -> list[dict[str, Tensor]]:
        """Per mini-batch, every tensor that crossed (up and down merged by name).

        A seed step is one exchange (up: smashed data and labels; down: ``grad``); a
        u-shape step is two (up: smashed data, then ``grad_top``; down: ``student_top``
        and the teacher's soft labels, then ``grad``).
        """
        per_step = 1 if self.split_mode == "seed" else 2
        steps = []
        for i in range(0, len(self.exchanges), per_step):
            merged: dict[str, Tensor] = {}
            for exchange in self.exchanges[i : i + per_step]:
                merged.update(exchange.up)
                merged.update(exchange.down)
            steps.append(merged)
        return steps


def token_recovery(
    guess: Tensor, input_ids: Tensor, attention_mask: Tensor
) -> tuple[int, int]:
    """``(exact, total)`` over the real tokens; a guess of -1 means "unknown"."""
    real = attention_mask.bool()
    return int(((guess == input_ids) & real).sum()), int(real.sum())


def right_padded(attention_mask: Tensor) -> bool:
    """Whether every row's real tokens come first (what the searches assume)."""
    lengths = attention_mask.sum(-1, keepdim=True)
    expected = torch.arange(attention_mask.shape[1]) < lengths
    return bool(torch.equal(attention_mask.bool(), expected))

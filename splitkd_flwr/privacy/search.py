"""The search with known device weights, and the optimizer replay that keeps them known.

The server sent the device its layers below the cut, so it can run them itself: the
hidden state at position ``t`` depends on tokens ``0..t`` only, so a left-to-right
search over the vocabulary finds the one token whose hidden state is the one that
arrived. A learned decoder proposes candidates first (the exact check makes the result
independent of the decoder's quality); the whole vocabulary is tried where none fits.

Within a round the device steps its weights after every mini-batch. The server knows
the optimizer (AdamW, the learning rate of the plan) and the gradient it sent back; with
the ids it has just recovered it computes the device's gradient and takes the same step,
so its copy of the device's weights follows them, bit for bit when the ids are right.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from splitkd_flwr.split.partition import StudentSegment

Propose = Callable[[Tensor, int], Tensor]  # (N, d), k -> (N, k) candidate ids

_CHUNK = 1024


@torch.no_grad()
def _hidden_at(segment: StudentSegment, prefix: Tensor, last: Tensor) -> Tensor:
    """Hidden state at the last position of ``prefix + [last]``: ``(R, t), (R,) -> (R, d)``."""
    sequences = torch.cat([prefix, last[:, None]], dim=1)  # (R, t + 1)
    out = []
    for start in range(0, len(sequences), _CHUNK):
        chunk = sequences[start : start + _CHUNK]
        out.append(segment(chunk, torch.ones_like(chunk))[:, -1])
    return torch.cat(out)


@torch.no_grad()
def search_ids(
    segment: StudentSegment,
    hidden: Tensor,
    attention_mask: Tensor,
    propose: Propose,
    vocab_size: int,
    *,
    candidates: int = 16,
    rtol: float = 1e-3,
) -> Tensor:
    """Recover right-padded ids ``(B, T)`` from the hidden states ``(B, T, d)`` at the cut."""
    segment.eval()
    batch, length = attention_mask.shape
    lengths = attention_mask.sum(-1)
    guess = torch.full((batch, length), -1, dtype=torch.long)
    target_all = hidden.float()
    for t in range(length):
        rows = (lengths > t).nonzero().flatten()
        if len(rows) == 0:
            break
        target = target_all[rows, t]  # (R, d)
        cand = propose(target, candidates)  # (R, m)
        best, dist = _best(segment, guess[rows, :t], cand, target)
        miss = dist > rtol * target.norm(dim=-1)
        if miss.any():
            everything = torch.arange(vocab_size).expand(int(miss.sum()), -1)
            full, full_dist = _best(
                segment, guess[rows[miss], :t], everything, target[miss]
            )
            better = full_dist < dist[miss]
            best[miss] = torch.where(better, full, best[miss])
        guess[rows, t] = best
    return guess


def _best(
    segment: StudentSegment, prefix: Tensor, cand: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    rows, m = cand.shape
    hidden = _hidden_at(
        segment, prefix.repeat_interleave(m, dim=0), cand.reshape(-1)
    ).float()  # (R * m, d)
    dist = (hidden.view(rows, m, -1) - target[:, None]).norm(dim=-1)  # (R, m)
    best = dist.argmin(-1)
    return cand.gather(1, best[:, None])[:, 0], dist.gather(1, best[:, None])[:, 0]


@dataclass
class ReplayResult:
    """The ids recovered per step, and how far the replica ended from the device's weights."""

    guesses: list[Tensor]
    max_weight_error: float
    weights_tracked_exactly: bool


def replay_round(
    segment: StudentSegment,
    steps: list[Mapping[str, Tensor]],
    propose: Propose,
    vocab_size: int,
    lr: float,
    returned: Mapping[str, Tensor],
    *,
    pad_id: int = 0,
) -> ReplayResult:
    """Search each step's ids with the replica, then step the replica as the device did.

    ``segment`` starts from the weights the server sent (it is trained in place);
    ``steps`` carry ``student_hidden``, ``attention_mask`` and ``grad`` (what the server
    sent back); ``returned`` is the device's upload, to say whether the replica tracked it.
    """
    # The device's optimizer as the client builds it: AdamW with the plan's rate.
    optimizer = torch.optim.AdamW(segment.parameters(), lr=lr)
    guesses = []
    for step in steps:
        mask = step["attention_mask"]
        guess = search_ids(segment, step["student_hidden"], mask, propose, vocab_size)
        guesses.append(guess)
        segment.train()
        optimizer.zero_grad(set_to_none=True)
        hidden = segment(guess.clamp_min(0).masked_fill(guess < 0, pad_id), mask)
        hidden.backward(step["grad"].to(hidden.dtype))
        optimizer.step()
    replica = segment.student_state_dict()
    errors = [
        float((replica[k].float() - returned[k].float()).abs().max())
        for k in replica
        if k in returned
    ]
    exact = all(torch.equal(replica[k], returned[k]) for k in replica if k in returned)
    return ReplayResult(guesses, max(errors, default=float("nan")), exact)

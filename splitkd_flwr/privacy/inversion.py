"""Attacks that read tokens off activations: the nearest table row, the labels, a decoder.

Each returns a guess ``(B, T)`` of the device's token ids (-1 where it has none), to be
scored with :func:`splitkd_flwr.privacy.capture.token_recovery`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from splitkd_flwr.core.constants import IGNORE_INDEX
from splitkd_flwr.split.partition import StudentSegment

_CHUNK = 4096


@torch.no_grad()
def nearest_rows(vectors: Tensor, table: Tensor) -> Tensor:
    """The index of the table row nearest (L2) to each vector: ``(..., d) -> (...)``.

    What the server does with the teacher's input-embedding output: it holds the
    teacher, hence the table the device looked the tokens up in.
    """
    flat = vectors.reshape(-1, vectors.shape[-1]).float()  # (N, d)
    table = table.float()  # (V, d)
    table_sq = (table * table).sum(-1)  # (V,)
    out = []
    for chunk in flat.split(_CHUNK):
        # ||x - w||^2 = ||x||^2 - 2 x.w + ||w||^2; ||x||^2 does not change the argmin
        out.append((table_sq - 2.0 * chunk @ table.T).argmin(-1))
    return torch.cat(out).reshape(vectors.shape[:-1])


def ids_from_labels(labels: Tensor) -> Tensor:
    """Read the ids off next-token labels: ``ids[:, t + 1] = labels[:, t]``."""
    guess = torch.full_like(labels, -1)
    shifted = labels[:, :-1]
    guess[:, 1:] = torch.where(shifted != IGNORE_INDEX, shifted, -1)
    return guess


class HiddenDecoder(nn.Module):
    """A two-layer MLP from a hidden state at the cut to the token at its position."""

    def __init__(self, width: int, vocab_size: int, units: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, units), nn.GELU(), nn.Linear(units, vocab_size)
        )

    def forward(self, hidden: Tensor) -> Tensor:
        """Logits over the vocabulary, ``(..., d) -> (..., V)``."""
        return self.net(hidden.float())

    @torch.no_grad()
    def guess(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """The most likely token at each real position, ``(B, T)`` (-1 on padding)."""
        best = self(hidden).argmax(-1)
        return best.masked_fill(~attention_mask.bool(), -1)

    @torch.no_grad()
    def propose(self, hidden: Tensor, k: int) -> Tensor:
        """The ``k`` likeliest tokens for each hidden state, ``(N, d) -> (N, k)``."""
        return self(hidden).topk(k, dim=-1).indices


def train_decoder(
    segment: StudentSegment,
    batches: Iterable[Mapping[str, Tensor]],
    vocab_size: int,
    *,
    steps: int = 600,
    batch_tokens: int = 1024,
    seed: int = 0,
) -> HiddenDecoder:
    """Fit a decoder on the server's own text run through the device's layers.

    ``segment`` is the device side as the server knows it (the weights it sent);
    ``batches`` are the server's own mini-batches (never the device's).
    """
    hidden_rows, id_rows = [], []
    with torch.no_grad():
        segment.eval()
        for batch in batches:
            mask = batch["attention_mask"].bool()
            hidden = segment(batch["input_ids"], batch["attention_mask"])  # (B, T, d)
            hidden_rows.append(hidden[mask])
            id_rows.append(batch["input_ids"][mask])
    inputs, targets = torch.cat(hidden_rows), torch.cat(id_rows)  # (N, d), (N,)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    decoder = HiddenDecoder(inputs.shape[-1], vocab_size)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        index = torch.randint(len(inputs), (batch_tokens,), generator=generator)
        loss = loss_fn(decoder(inputs[index]), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    decoder.eval()
    return decoder

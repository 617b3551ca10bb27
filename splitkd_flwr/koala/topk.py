"""Top-k log-prob uploads: what a client sends instead of a full-vocabulary distribution.

A distribution over V tokens costs V floats per position; its k most likely tokens cost k
(value, index) pairs. The receiver spreads the missing mass (the *tail*, ``1 - sum of the
k probabilities``) uniformly over the other ``V - k`` tokens, so the decoded row is again
a distribution (sums to 1) and no token gets probability 0 (a KL towards it stays finite).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from splitkd_flwr.core.errors import ConfigError

VALUE_BYTES = 2  # fp16 log-probs
_MIN_TAIL = (
    1e-12  # probability floor of a tail token when the top-k hold (almost) all mass
)


def index_bytes(vocab_size: int) -> int:
    """Bytes of one token index: int16 while the vocabulary fits (V <= 65,536), else int32."""
    return 2 if vocab_size <= 1 << 16 else 4


def upload_bytes_per_token(k: int, vocab_size: int) -> int:
    """Bytes per position of a top-k upload (``k = 0``: the full fp16 distribution)."""
    if k <= 0 or k >= vocab_size:
        return VALUE_BYTES * vocab_size
    return k * (VALUE_BYTES + index_bytes(vocab_size))


def encode_topk(log_probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest log-probs of each row (fp16) and their token ids (int32).

    Parameters
    ----------
    log_probs : Tensor
        (..., V) normalised log-probabilities.
    k : int
        1 <= k <= V.

    Returns
    -------
    tuple[Tensor, Tensor]
        (..., k) fp16 values and (..., k) int32 indices, most likely first.
    """
    if not 1 <= k <= log_probs.shape[-1]:
        raise ConfigError(f"top-k needs 1 <= k <= {log_probs.shape[-1]}, got {k}")
    values, indices = log_probs.float().topk(k, dim=-1)
    return values.half(), indices.int()


def decode_topk(values: Tensor, indices: Tensor, vocab_size: int) -> Tensor:
    """Full (..., V) fp32 log-probs from a top-k upload; the tail mass spread uniformly.

    Raises
    ------
    ConfigError
        Shapes that disagree, or indices outside the vocabulary.
    """
    k = values.shape[-1]
    if values.shape != indices.shape or not 1 <= k <= vocab_size:
        raise ConfigError(
            f"top-k upload of shape {tuple(values.shape)} / {tuple(indices.shape)} "
            f"does not fit a vocabulary of {vocab_size}"
        )
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= vocab_size):
        raise ConfigError(f"top-k token ids outside [0, {vocab_size})")
    top = values.float()
    if k == vocab_size:
        return top.gather(-1, indices.long().argsort(-1))
    # (..., 1) the mass the upload left out, shared by V - k tokens
    tail = (1.0 - top.exp().sum(-1, keepdim=True)).clamp(
        min=_MIN_TAIL * (vocab_size - k)
    )
    tail_log = tail.log() - math.log(vocab_size - k)
    full = tail_log.expand(*top.shape[:-1], vocab_size).clone()
    full.scatter_(-1, indices.long(), top)
    # renormalise: fp16 rounding of the values leaves the row a hair off 1
    return torch.log_softmax(full, dim=-1)

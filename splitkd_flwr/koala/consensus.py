"""The consensus soft labels of several small models (heterogeneous KOALA).

The paper's exact weighting was not available, so
this one is ours: for every token, the soft label is a mixture of the small models'
distributions at temperature T,

    q(v) = sum_k w_k * p_k(v),   w_k ∝ n_k * max_v' p_k(v'),

where ``n_k`` is the number of examples architecture k's clients trained on this round
(its share of the federation's data) and ``max_v' p_k(v')`` its confidence on that very
token. It needs no labels, so the proxy data stays unlabelled; a model that is unsure
where another is sure yields to it token by token, and with one architecture it is
exactly that model's distribution (homogeneous mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from splitkd_flwr.core.errors import ConfigError


def consensus_log_probs(
    logits: Sequence[Tensor], num_examples: Sequence[float], temperature: float
) -> Tensor:
    """Log of the consensus soft labels ``sum_k w_k p_k`` (module docstring: the rule).

    Parameters
    ----------
    logits : Sequence[Tensor]
        One (B, T, V) tensor per small model, same shape.
    num_examples : Sequence[float]
        Examples each model's clients trained on this round (its prior weight), > 0.
    temperature : float
        Every ``p_k`` is ``softmax(logits_k / temperature)``.

    Returns
    -------
    Tensor
        (B, T, V) fp32 log-probabilities (each row sums to 1 in probability).
    """
    if not logits or len(logits) != len(num_examples) or min(num_examples) <= 0:
        raise ConfigError(
            f"consensus needs >= 1 model and positive example counts, got {list(num_examples)}"
        )
    # (K, B, T, V)
    logp = torch.stack([F.log_softmax(x.float() / temperature, dim=-1) for x in logits])
    # (K, 1, 1, 1)
    prior = torch.tensor([float(n) for n in num_examples]).log().view(-1, 1, 1, 1)
    log_w = prior + logp.max(dim=-1, keepdim=True).values  # (K, B, T, 1)
    # normalised over models
    log_w = log_w - torch.logsumexp(log_w, dim=0, keepdim=True)
    return torch.logsumexp(log_w + logp, dim=0)  # (B, T, V)

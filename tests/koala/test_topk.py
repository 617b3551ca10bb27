"""Top-k log-prob uploads: decoding keeps the k values, spreads the tail, stays a distribution."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.koala.topk import (
    decode_topk,
    encode_topk,
    upload_bytes_per_token,
)
from splitkd_flwr.koala.transfer import consensus_teacher
from tests.apps.tiny import tiny_llama

VOCAB = 50


def test_decoding_keeps_the_top_k_and_spreads_the_tail_mass_uniformly() -> None:
    # Prepare
    log_p = F.log_softmax(torch.randn(2, 3, VOCAB) * 3, dim=-1)
    k = 5
    # Execute
    values, indices = encode_topk(log_p, k)
    decoded = decode_topk(values, indices, VOCAB)
    # Assert: a distribution again
    torch.testing.assert_close(decoded.exp().sum(-1), torch.ones(2, 3))
    # the k uploaded tokens keep their log-probs (up to fp16 rounding)
    kept = decoded.gather(-1, indices.long())
    torch.testing.assert_close(
        kept, log_p.gather(-1, indices.long()), atol=2e-3, rtol=0
    )
    # every other token gets tail / (V - k), the tail being what the top-k left out
    tail = 1.0 - log_p.gather(-1, indices.long()).exp().sum(-1)  # (2, 3)
    others = torch.ones_like(decoded, dtype=torch.bool).scatter(
        -1, indices.long(), False
    )
    expected = (tail / (VOCAB - k)).unsqueeze(-1).expand_as(decoded)[others]
    torch.testing.assert_close(decoded.exp()[others], expected, atol=1e-5, rtol=2e-3)


def test_full_k_reconstructs_and_k1_still_gives_every_token_mass() -> None:
    log_p = F.log_softmax(torch.randn(4, VOCAB), dim=-1)
    full = decode_topk(*encode_topk(log_p, VOCAB), VOCAB)
    torch.testing.assert_close(full, log_p, atol=2e-3, rtol=0)
    # a one-hot-ish row: the tail is floored, never 0 (a KL towards it stays finite)
    sharp = F.log_softmax(torch.tensor([[100.0] + [0.0] * (VOCAB - 1)]), dim=-1)
    decoded = decode_topk(*encode_topk(sharp, 1), VOCAB)
    assert bool(torch.isfinite(decoded).all())
    assert decoded[0, 0].exp().item() == pytest.approx(1.0, abs=1e-6)


def test_bad_uploads_are_refused() -> None:
    values, indices = encode_topk(F.log_softmax(torch.randn(2, VOCAB), dim=-1), 3)
    with pytest.raises(ConfigError):
        decode_topk(values, indices + VOCAB, VOCAB)  # ids outside the vocabulary
    with pytest.raises(ConfigError):
        decode_topk(values, indices[:, :2], VOCAB)  # shapes disagree
    with pytest.raises(ConfigError):
        encode_topk(torch.zeros(2, VOCAB), 0)


def test_upload_bytes_grow_with_k_and_stop_at_the_full_distribution() -> None:
    assert upload_bytes_per_token(8, 1024) == 8 * (2 + 2)
    assert upload_bytes_per_token(8, 128_256) == 8 * (2 + 4)  # int32 ids past 65,536
    assert upload_bytes_per_token(0, 1024) == 2 * 1024
    assert upload_bytes_per_token(2048, 1024) == upload_bytes_per_token(0, 1024)


def test_consensus_through_top_k_uploads_approaches_the_full_one_as_k_grows() -> None:
    # Prepare: two heterogeneous small models and one batch
    torch.manual_seed(0)
    models = [tiny_llama(VOCAB, 16, 1), tiny_llama(VOCAB, 8, 2)]
    batch = {
        "input_ids": torch.randint(4, VOCAB, (2, 6)),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
    }
    full = F.log_softmax(consensus_teacher(models, [1.0, 2.0], 2.0)(batch) / 2.0, -1)

    def kl(k: int) -> float:
        approx = consensus_teacher(models, [1.0, 2.0], 2.0, top_k=k)(batch) / 2.0
        log_q = F.log_softmax(approx, -1)
        return F.kl_div(log_q, full, log_target=True, reduction="batchmean").item()

    # Execute
    divergences = [kl(k) for k in (1, 8, 32, VOCAB)]
    # Assert
    assert divergences == sorted(divergences, reverse=True)
    assert math.isclose(divergences[-1], 0.0, abs_tol=1e-4)
    assert divergences[0] > 1e-3

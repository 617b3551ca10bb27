"""Sequence-level KD: answers sampled from prompts, weighted by the consensus, trained into the large model."""

from __future__ import annotations

import pytest
import torch

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.loading import Examples
from splitkd_flwr.koala.sequence import (
    SequenceKD,
    answer_labels,
    build_rows,
    consensus_weights,
    sample_continuations,
    sequence_kd,
    weighted_sequence_ce,
)
from splitkd_flwr.koala.transfer import (
    epoch_batches,
    server_transfer,
    train_ce,
    unlabelled_kd_loss,
)
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.loss import IGNORE_INDEX
from tests.apps.tiny import tiny_llama

VOCAB, EOS, PAD = 40, 2, 0


def _counting_rows(n: int = 64, seq_len: int = 10) -> Examples:
    """A "language" where token t is followed by t + 1 (ids 4..VOCAB-1)."""
    start = torch.randint(
        4, VOCAB - seq_len, (n, 1), generator=torch.Generator().manual_seed(1)
    )
    ids = start + torch.arange(seq_len)
    return Examples(ids, torch.ones_like(ids))


@pytest.fixture(scope="module")
def counter() -> torch.nn.Module:
    """A small model that learnt to count (trained once for this module)."""
    # module fixtures run before conftest's per-test single-thread setting
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = tiny_llama(VOCAB, hidden=32, layers=2)
    batches = epoch_batches(_counting_rows(), 16, epochs=30, max_batches=0, seed=0)
    train_ce(model, batches, lr=1e-2)
    return model


def test_sampled_answers_continue_prompts_of_different_lengths_in_one_batch(
    counter,
) -> None:
    # Execute: left-padded prompts of lengths 2, 4 and 6
    prompts = [[10, 11], [5, 6, 7, 8], [20, 21, 22, 23, 24, 25]]
    answers = sample_continuations(
        counter, prompts, 4, EOS, torch.Generator().manual_seed(0)
    )
    # Assert: each answer goes on counting from its own prompt's last token
    for prompt, answer in zip(prompts, answers):
        assert len(answer) == 4
        expected = list(range(prompt[-1] + 1, prompt[-1] + 5))
        assert sum(a == e for a, e in zip(answer, expected)) >= 3


def test_rows_train_on_the_answer_tokens_only() -> None:
    # Prepare: 2 prompts, answers by 2 models; one answer cut by seq_len
    prompts = [[1, 5, 6], [1, 9]]
    answers = [[[7, 8, EOS], [10]], [[30, 31, 32, 33, 34], [11, EOS]]]
    # Execute
    rows = build_rows(prompts, answers, seq_len=6, pad_id=PAD)
    labels = answer_labels(rows)
    # Assert
    assert rows.examples.input_ids.shape == (4, 6)
    assert rows.author.tolist() == [0, 0, 1, 1] and rows.prompt_index.tolist() == [
        0,
        1,
        0,
        1,
    ]
    assert rows.examples.input_ids[2].tolist() == [1, 5, 6, 30, 31, 32]  # cut at 6
    assert labels[0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 7, 8, EOS, IGNORE_INDEX]
    assert labels[1].tolist() == [IGNORE_INDEX, 10] + [IGNORE_INDEX] * 4
    with pytest.raises(ConfigError, match="answered"):
        build_rows(prompts, [[[7]]], 6, PAD)


def test_consensus_weights_favour_the_answer_the_models_agree_on(counter) -> None:
    # Prepare: two models that count; to prompt 0, model 0 answers right and model 1 wrong
    other = tiny_llama(VOCAB, hidden=32, layers=2)
    other.load_state_dict(counter.state_dict())
    prompts = [[1, 10, 11, 12], [1, 20, 21]]
    answers = [[[13, 14, 15], [22, 23]], [[31, 6, 19], [22, 23]]]
    rows = build_rows(prompts, answers, seq_len=8, pad_id=PAD)
    # Execute
    weights = consensus_weights([counter, other], [1.0, 1.0], rows, batch_size=2)
    one_model = consensus_weights(
        [counter], [1.0], build_rows(prompts, answers[:1], 8, PAD), 2
    )
    # Assert: a distribution over each prompt's answers
    for j in (0, 1):
        assert weights[rows.prompt_index == j].sum().item() == pytest.approx(1.0)
    assert weights[0] > 0.95  # the right answer to prompt 0 outweighs the wrong one
    assert weights[1].item() == pytest.approx(
        weights[3].item()
    )  # identical answers tie
    torch.testing.assert_close(one_model, torch.ones(2))
    # more data behind model 1 moves weight towards its answers
    more = consensus_weights([counter, other], [1.0, 1e6], rows, batch_size=2)
    assert more[2] > weights[2]


def test_weighted_ce_ignores_zero_weight_rows() -> None:
    logits = torch.randn(2, 3, VOCAB, requires_grad=True)
    labels = torch.tensor([[5, 6, IGNORE_INDEX], [7, 8, 9]])
    loss = weighted_sequence_ce(logits, labels, torch.tensor([0.0, 1.0]))
    loss.backward()
    assert logits.grad[0].abs().sum().item() == 0.0
    only_second = weighted_sequence_ce(logits[1:], labels[1:], torch.tensor([1.0]))
    assert loss.item() == pytest.approx(only_second.item())


def test_sequence_kd_teaches_the_large_model_what_only_the_answers_hold(
    counter,
) -> None:
    # Prepare: the large model never saw counting; the prompts are all it could read
    torch.manual_seed(1)
    large = tiny_llama(VOCAB, hidden=48, layers=2)
    prompts = [[1, *range(s, s + 3)] for s in range(4, VOCAB - 12)]
    config = SequenceKD(prompts, len(prompts), 6, 12, 8, EOS, PAD)
    held_out = [
        {
            "input_ids": _counting_rows(16).input_ids,
            "attention_mask": _counting_rows(16).attention_mask,
        }
    ]
    before = evaluate_lm(large, held_out)["loss"]
    # Execute
    for r in range(6):
        figures = sequence_kd(large, [counter], [1.0], config, lr=1e-2, seed=r)
    # Assert
    assert evaluate_lm(large, held_out)["loss"] < before - 1.0
    assert figures["seq-kd-answers"] == len(prompts)
    assert figures["seq-kd-max-weight"] == pytest.approx(1.0)
    assert 0 < figures["seq-kd-answer-tokens"] <= 6 * len(prompts)


def test_one_server_step_with_heterogeneous_architectures_sequence_kd_and_top_k(
    counter,
) -> None:
    # Prepare: clients of two architectures (hidden 32 x 2 layers, hidden 16 x 1 layer)
    smalls = [
        tiny_llama(VOCAB, hidden=32, layers=2),
        tiny_llama(VOCAB, hidden=16, layers=1),
    ]
    second = tiny_llama(VOCAB, hidden=16, layers=1)
    train_ce(second, epoch_batches(_counting_rows(), 16, 5, 0, seed=1), lr=1e-2)
    updates = [[(counter.state_dict(), 32.0)], [(second.state_dict(), 16.0)]]
    large = tiny_llama(VOCAB, hidden=48, layers=2)
    prompts = [[1, s, s + 1] for s in range(4, 30)]
    proxy = epoch_batches(_counting_rows(16, 6), 8, 1, 0, seed=2)
    # Execute
    metrics = server_transfer(
        large,
        smalls,
        updates,
        proxy,
        unlabelled_kd_loss(1.0),
        1e-2,
        1e-2,
        top_k=4,
        sequence=SequenceKD(prompts, 10, 4, 8, 8, EOS, PAD),
        seed=3,
    )
    # Assert: both architectures heard; 10 prompts x 2 answers; consensus picked among them
    assert metrics["architectures-heard"] == 2.0
    assert metrics["seq-kd-answers"] == 20.0
    assert 0.5 <= metrics["seq-kd-max-weight"] <= 1.0
    assert {"reverse-kd-loss", "forward-kd-loss-0", "forward-kd-loss-1"} <= set(metrics)


def test_sequence_kd_config_is_checked() -> None:
    with pytest.raises(ConfigError):
        SequenceKD([], 4, 4, 8, 2, EOS, PAD)
    with pytest.raises(ConfigError, match="seq_len"):
        SequenceKD([[1] * 8], 4, 4, 8, 2, EOS, PAD)

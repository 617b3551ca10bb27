"""KOALA's steps: FedAvg, the consensus rule, local CE, reverse/forward KD, the server step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from splitkd_flwr.core.errors import ConfigError, ModelError
from splitkd_flwr.data.loading import Examples
from splitkd_flwr.koala.transfer import (
    consensus_log_probs,
    distill,
    epoch_batches,
    fedavg,
    model_teacher,
    server_transfer,
    state_of,
    train_ce,
    unlabelled_kd_loss,
)
from splitkd_flwr.split.evaluate import evaluate_lm
from tests.apps.tiny import tiny_llama

VOCAB = 40


def _examples(n: int = 16, seq_len: int = 12) -> Examples:
    generator = torch.Generator().manual_seed(1)
    # A repetitive "language": token t is followed by t + 1, so a model can learn it quickly.
    start = torch.randint(4, VOCAB - seq_len, (n, 1), generator=generator)
    ids = start + torch.arange(seq_len)  # (N, T)
    mask = torch.ones_like(ids)
    mask[0, seq_len // 2 :] = 0  # one padded example
    return Examples(ids, mask)


def _batches(n: int = 16) -> list[dict[str, torch.Tensor]]:
    return epoch_batches(_examples(n), batch_size=4, epochs=1, max_batches=0, seed=0)


def test_fedavg_is_the_weighted_mean() -> None:
    # Prepare
    a, b = (
        {"w": torch.zeros(2, 2), "step": torch.tensor(3)},
        {"w": torch.ones(2, 2), "step": torch.tensor(5)},
    )
    # Execute
    averaged = fedavg([a, b], [1.0, 3.0])
    # Assert
    torch.testing.assert_close(averaged["w"], torch.full((2, 2), 0.75))
    assert averaged["step"].item() == 3  # integer buffers are not averaged


def test_fedavg_refuses_different_architectures() -> None:
    with pytest.raises(ModelError):
        fedavg([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}], [1.0, 1.0])
    with pytest.raises(ModelError):
        fedavg([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}], [1.0, 1.0])
    with pytest.raises(ModelError):
        fedavg([], [])


def test_consensus_of_one_model_is_that_model() -> None:
    logits = torch.randn(2, 3, VOCAB)
    log_q = consensus_log_probs([logits], [5.0], temperature=2.0)
    torch.testing.assert_close(log_q, F.log_softmax(logits / 2.0, dim=-1))


def test_consensus_is_a_distribution_between_its_members() -> None:
    # Prepare
    a, b = torch.randn(2, 3, VOCAB), torch.randn(2, 3, VOCAB)
    # Execute
    q = consensus_log_probs([a, b], [1.0, 1.0], temperature=1.0).exp()
    # Assert
    torch.testing.assert_close(q.sum(-1), torch.ones(2, 3))
    low = torch.minimum(a.softmax(-1), b.softmax(-1))
    high = torch.maximum(a.softmax(-1), b.softmax(-1))
    assert bool(
        ((q >= low - 1e-6) & (q <= high + 1e-6)).all()
    )  # a convex mixture per token


def test_consensus_weighs_the_confident_model_and_the_larger_federation() -> None:
    # Prepare: model a is sure of token 0, model b nearly uniform.
    sure = torch.full((1, 1, VOCAB), -10.0)
    sure[..., 0] = 10.0
    unsure = torch.zeros(1, 1, VOCAB)
    # Execute
    q_equal = consensus_log_probs([sure, unsure], [1.0, 1.0], 1.0).exp()
    q_more_b = consensus_log_probs([sure, unsure], [1.0, 100.0], 1.0).exp()
    # Assert: equal data -> the confident model dominates; much more data -> b gains weight
    assert q_equal[0, 0, 0] > 0.9
    assert q_more_b[0, 0, 0] < q_equal[0, 0, 0]
    # the mixture weight is n_k * max p_k, normalised
    w_sure = 1.0 * 1.0 / (1.0 * 1.0 + 1.0 / VOCAB)
    assert math.isclose(
        q_equal[0, 0, 0].item(), w_sure + (1 - w_sure) / VOCAB, rel_tol=1e-4
    )


def test_consensus_refuses_bad_inputs() -> None:
    with pytest.raises(ConfigError):
        consensus_log_probs([], [], 1.0)
    with pytest.raises(ConfigError):
        consensus_log_probs([torch.zeros(1, 1, 4)], [0.0], 1.0)


def test_train_ce_lowers_the_loss_and_counts_examples() -> None:
    # Prepare
    model, batches = tiny_llama(VOCAB, hidden=16, layers=1), _batches()
    # Execute
    first = train_ce(model, batches, lr=1e-2)
    second = train_ce(model, batches, lr=1e-2)
    # Assert
    assert second["train-loss"] < first["train-loss"]
    assert first["num-examples"] == 16 and first["batches"] == 4
    assert (
        first["tokens"] == 15 * 11 + 5
    )  # 11 targets per full row, 5 in the half-padded one


def test_distill_moves_the_student_towards_the_teacher() -> None:
    # Prepare: a teacher that learnt the data, a fresh student of another shape
    teacher, student = (
        tiny_llama(VOCAB, hidden=24, layers=1),
        tiny_llama(VOCAB, hidden=16, layers=2),
    )
    batches = _batches()
    train_ce(teacher, batches * 3, lr=1e-2)
    loss = unlabelled_kd_loss(temperature=2.0)
    teacher_before = state_of(teacher)
    # Execute
    first = distill(student, model_teacher(teacher), batches, 1e-2, loss)
    for _ in range(3):
        last = distill(student, model_teacher(teacher), batches, 1e-2, loss)
    # Assert
    assert last["kd-loss"] < first["kd-loss"]
    assert all(p.grad is not None for p in student.parameters())
    assert all(torch.equal(teacher_before[k], v) for k, v in state_of(teacher).items())


def test_server_transfer_averages_per_architecture_and_improves_the_large_model() -> (
    None
):
    # Prepare: two architectures, two clients of the first, one of the second
    batches = _batches()
    smalls = [
        tiny_llama(VOCAB, hidden=16, layers=1),
        tiny_llama(VOCAB, hidden=8, layers=2),
    ]
    large = tiny_llama(VOCAB, hidden=32, layers=2)
    clients = [tiny_llama(VOCAB, hidden=16, layers=1) for _ in range(2)] + [
        tiny_llama(VOCAB, hidden=8, layers=2)
    ]
    for client in clients:
        train_ce(client, batches * 2, lr=1e-2)
    updates = [
        [(state_of(clients[0]), 10.0), (state_of(clients[1]), 30.0)],
        [(state_of(clients[2]), 20.0)],
    ]
    expected = fedavg([state_of(clients[0]), state_of(clients[1])], [10.0, 30.0])
    loss = unlabelled_kd_loss(temperature=1.0)

    def held_out() -> float:
        return evaluate_lm(large, batches)["loss"]

    before = held_out()
    # Execute
    metrics = server_transfer(
        large, smalls, updates, batches, loss, large_lr=1e-2, small_lr=1e-12
    )
    # Assert
    assert metrics["architectures-heard"] == 2
    assert {"reverse-kd-loss", "forward-kd-loss-0", "forward-kd-loss-1"} <= set(metrics)
    assert held_out() < before
    # with a negligible small-model lr, the small model is (almost exactly) the FedAvg
    torch.testing.assert_close(
        state_of(smalls[0])["lm_head.weight"],
        expected["lm_head.weight"],
        atol=1e-6,
        rtol=0,
    )


def test_server_transfer_without_updates_changes_nothing() -> None:
    large = tiny_llama(VOCAB, hidden=32, layers=1)
    before = state_of(large)
    metrics = server_transfer(
        large,
        [tiny_llama(VOCAB, hidden=8, layers=1)],
        [[]],
        _batches(),
        unlabelled_kd_loss(1.0),
        1e-2,
        1e-2,
    )
    assert metrics == {"architectures-heard": 0.0}
    assert all(torch.equal(before[k], v) for k, v in state_of(large).items())


def test_server_transfer_needs_one_group_per_architecture() -> None:
    with pytest.raises(ConfigError):
        server_transfer(
            tiny_llama(VOCAB, 8, 1),
            [tiny_llama(VOCAB, 8, 1)],
            [[], []],
            [],
            unlabelled_kd_loss(1.0),
            1e-2,
            1e-2,
        )

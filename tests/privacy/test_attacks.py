"""The audit's attacks on tiny real models: each recovers what its threat model says."""

import copy

import torch

from splitkd_flwr.privacy.capture import token_recovery
from splitkd_flwr.privacy.inversion import ids_from_labels, nearest_rows
from splitkd_flwr.privacy.leaks import labels_from_top_gradient, moved_rows
from splitkd_flwr.privacy.search import replay_round, search_ids
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.partition import StudentSegment, partition
from splitkd_flwr.split.step import (
    device_backward,
    device_forward,
    make_labels,
    server_step,
)
from splitkd_flwr.split.ushape import (
    ushape_device_forward,
    ushape_device_loss,
    ushape_partition,
    ushape_server_forward,
)
from tests.split.test_step import VOCAB, _batch, _pair


def _random_proposals(hidden: torch.Tensor, k: int) -> torch.Tensor:
    # A useless decoder: the exact check and the full-vocabulary fallback must carry it.
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, VOCAB, (len(hidden), k), generator=generator)


def test_teacher_embeddings_and_labels_give_the_ids_away() -> None:
    # Prepare
    teacher, student = _pair("llama")
    device_part, _ = partition(teacher, student, 2)
    input_ids, mask = _batch(1)

    # Execute
    smashed, _ = device_forward(device_part, input_ids, mask)
    from_embeds = nearest_rows(
        smashed.teacher_embeds, teacher.get_input_embeddings().weight
    )
    from_labels = ids_from_labels(smashed.labels)

    # Assert: every real token; the labels miss only each row's first one
    exact, total = token_recovery(from_embeds, input_ids, mask)
    assert exact == total
    exact, total = token_recovery(from_labels, input_ids, mask)
    assert exact == total - len(input_ids)


def test_search_and_replay_track_the_device_bit_for_bit() -> None:
    # Prepare: a seed-mode round of two steps; the server keeps a copy of what it sent
    teacher, student = _pair("gpt2")
    cut = 2
    device_part, server_part = partition(teacher, student, cut)
    replica_student = copy.deepcopy(student)
    replica = StudentSegment(replica_student, 0, cut, embed=True, head=False)
    device_optimizer = torch.optim.AdamW(device_part.student_parameters(), lr=1e-2)
    server_optimizer = torch.optim.AdamW(server_part.student_parameters(), lr=1e-2)
    batches, steps = [_batch(1), _batch(2)], []
    for input_ids, mask in batches:
        smashed, hidden = device_forward(device_part, input_ids, mask)
        result = server_step(server_part, smashed, server_optimizer, KDLoss())
        device_backward(hidden, result.grad_at_cut, device_optimizer)
        steps.append(
            {
                "student_hidden": smashed.student_hidden,
                "attention_mask": mask,
                "grad": result.grad_at_cut,
            }
        )
    uploaded = device_part.student.student_state_dict()

    # Execute
    result = replay_round(replica, steps, _random_proposals, VOCAB, 1e-2, uploaded)

    # Assert
    for guess, (input_ids, mask) in zip(result.guesses, batches, strict=True):
        exact, total = token_recovery(guess, input_ids, mask)
        assert exact == total
    assert result.weights_tracked_exactly


def test_search_with_wrong_weights_does_not_recover_the_ids() -> None:
    # Prepare: the server's copy differs from the device's (private weights)
    teacher, student = _pair("llama")
    device_part, _ = partition(teacher, student, 2)
    torch.manual_seed(123)
    _, other = _pair("llama")
    other.apply(other._init_weights)
    wrong = StudentSegment(other, 0, 2, embed=True, head=False)
    input_ids, mask = _batch(1)
    smashed, _ = device_forward(device_part, input_ids, mask)

    # Execute
    guess = search_ids(wrong, smashed.student_hidden, mask, _random_proposals, VOCAB)

    # Assert
    exact, total = token_recovery(guess, input_ids, mask)
    assert exact < 0.5 * total


def test_the_ushape_top_gradient_gives_the_labels_away() -> None:
    # Prepare: one u-shape step; the server holds the head it sent
    teacher, student = _pair("llama")
    device_part, server_part, head = ushape_partition(teacher, student, 2)
    server_copy = copy.deepcopy(student)
    head_copy = StudentSegment(
        server_copy, 5, 5, embed=False, head=True
    )  # the student has 5 blocks
    loss_fn = KDLoss(alpha=0.5, temperature=2.0)
    input_ids, mask = _batch(2)
    labels = make_labels(input_ids, mask)
    optimizer = torch.optim.AdamW(
        [*device_part.student_parameters(), *head.parameters()]
    )
    up, _ = ushape_device_forward(device_part, input_ids, mask)
    _, down = ushape_server_forward(server_part, up, 0, 2.0)
    grad_top, _, _ = ushape_device_loss(head, down, labels, mask, loss_fn, optimizer)
    step = {**up, **down, "grad_top": grad_top}

    # Execute
    recovered = labels_from_top_gradient(head_copy, step, loss_fn, alpha=0.5)

    # Assert
    assert torch.equal(recovered, labels)


def test_moved_embedding_rows_are_the_token_types_used() -> None:
    # Prepare: the device's AdamW, three steps on a few token types
    table = torch.nn.Embedding(VOCAB, 8)
    sent = table.weight.detach().clone()
    optimizer = torch.optim.AdamW(table.parameters(), lr=1e-2)
    used = torch.tensor([3, 7, 11, 40])
    for _ in range(3):
        optimizer.zero_grad()
        table(used).pow(2).sum().backward()
        optimizer.step()

    # Execute
    moved = moved_rows(sent, table.weight.detach(), 3, 1e-2)

    # Assert
    assert moved.nonzero().flatten().tolist() == used.tolist()

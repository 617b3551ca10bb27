"""Tests of the clustered server (SFLv1): the unsplit step on the union, exact removal, rollback."""

import copy

import pytest
import torch

from splitkd_flwr.core.errors import ModelError
from splitkd_flwr.split.cluster import ClusterServer
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.models import load_causal_lm, untie_embeddings
from splitkd_flwr.split.partition import device_param_names, partition
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split.step import (
    IGNORE_INDEX,
    device_backward,
    device_forward,
    reference_step,
)
from tests.split.test_step import LLAMA_STUDENT, LLAMA_TEACHER, VOCAB

RTOL, ATOL = 1e-5, 1e-8
T = 9


def _sgd(params):
    return torch.optim.SGD(params, lr=0.5)


def _batch(seed: int, lengths: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask, ``(B, T)``, T fixed so batches concatenate."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), T), generator=generator)
    mask = (torch.arange(T) < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


BATCHES = {0: _batch(1, (9, 6)), 1: _batch(2, (4, 9, 7)), 2: _batch(3, (8,))}


def _pair():
    torch.manual_seed(0)
    return load_causal_lm(LLAMA_TEACHER), load_causal_lm(LLAMA_STUDENT)


def _cluster_round(server: ClusterServer, cut: int, members, fail=()) -> None:
    """Every member: one local step (device forward, batched server step, device backward)."""
    server.begin_round(cut, list(members))
    devices = {}
    for m in members:
        local = copy.deepcopy(server.student)
        part, _ = partition(server.teacher, local, cut)
        devices[m] = (local, part, _sgd(part.student_parameters()))
    frames, hidden = [], {}
    for m in members:
        smashed, hidden[m] = device_forward(devices[m][1], *BATCHES[m])
        frames.append((m, smashed))
    results = server.step_many(frames)
    kept = {}
    for (m, smashed), result in zip(frames, results):
        device_backward(hidden[m], result.grad_at_cut, devices[m][2])
        if m in fail:
            continue
        local = devices[m][0]
        weights = {
            n: local.state_dict()[n] for n in device_param_names(server.student, cut)
        }
        kept[m] = (weights, int((smashed.labels != IGNORE_INDEX).sum()))
    server.commit(kept)


def _unsplit(members) -> dict[str, torch.Tensor]:
    teacher, student = _pair()
    untie_embeddings(student)
    ids = torch.cat([BATCHES[m][0] for m in members])
    mask = torch.cat([BATCHES[m][1] for m in members])
    reference_step(teacher, student, ids, mask, _sgd(student.parameters()), KDLoss())
    return student.state_dict()


@pytest.mark.parametrize("cut", [1, 3])
def test_sgd_cluster_round_is_one_unsplit_step_on_the_concatenated_batch(
    cut: int,
) -> None:
    # Prepare
    teacher, student = _pair()
    server = ClusterServer(teacher, student, KDLoss(), 0.5, make_optimizer=_sgd)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    # Execute
    _cluster_round(server, cut, [0, 1, 2])
    # Assert: device side (averaged by tokens) and server side both
    expected = _unsplit([0, 1, 2])
    for name, value in expected.items():
        assert not torch.equal(student.state_dict()[name], initial[name]), name
        torch.testing.assert_close(
            student.state_dict()[name], value, rtol=RTOL, atol=ATOL, msg=name
        )


def test_a_failed_member_is_removed_exactly() -> None:
    # Prepare
    teacher, student = _pair()
    server = ClusterServer(teacher, student, KDLoss(), 0.5, make_optimizer=_sgd)
    teacher2, student2 = _pair()
    alone = ClusterServer(teacher2, student2, KDLoss(), 0.5, make_optimizer=_sgd)
    # Execute: member 1 steps the server (its frame was batched with the others') then fails
    _cluster_round(server, 2, [0, 1, 2], fail=(1,))
    _cluster_round(alone, 2, [0, 2])
    # Assert: as if member 1 had never been in the round (the teacher's batched forward is
    # the only difference: float rounding of a bigger matmul)
    expected = _unsplit([0, 2])
    for name, value in alone.student.state_dict().items():
        torch.testing.assert_close(
            student.state_dict()[name], value, rtol=1e-6, atol=1e-9, msg=name
        )
        torch.testing.assert_close(
            value, expected[name], rtol=RTOL, atol=ATOL, msg=name
        )


def test_identical_members_average_to_one_adamw_step_moments_included() -> None:
    # Prepare: two members on the same batch == one device (SplitServer) on it
    teacher, student = _pair()
    cluster = ClusterServer(teacher, student, KDLoss(), 1e-2)
    teacher1, student1 = _pair()
    single = SplitServer(teacher1, student1, KDLoss(), 1e-2)
    ids, mask = BATCHES[1]
    # Execute: two rounds, so the second starts from the averaged moments
    for _ in range(2):
        cluster.begin_round(2, [7, 8])
        device_part, _ = partition(teacher, copy.deepcopy(student), 2)
        smashed, _ = device_forward(device_part, ids, mask)
        cluster.step_many([(7, smashed), (8, smashed)])
        weights = cluster.device_state(2)
        cluster.commit({7: (weights, 5), 8: (weights, 11)})
        single.begin_round(2)
        single.step(smashed)
        single.commit(single.device_state(2))
    # Assert
    for name, value in single.student.state_dict().items():
        torch.testing.assert_close(student.state_dict()[name], value, msg=name)
    moments = [
        cluster.optimizer.state[p]["exp_avg_sq"]
        for p in student.parameters()
        if p in cluster.optimizer.state
    ]
    expected = [
        single.optimizer.state[p]["exp_avg_sq"]
        for p in student1.parameters()
        if p in single.optimizer.state
    ]
    assert len(moments) == len(expected) > 0
    for a, b in zip(moments, expected):
        torch.testing.assert_close(a, b)


def test_rollback_and_bad_commits_leave_the_global_student_untouched() -> None:
    teacher, student = _pair()
    server = ClusterServer(teacher, student, KDLoss(), 1e-2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    server.begin_round(2, [0, 1])
    part, _ = partition(teacher, copy.deepcopy(student), 2)
    smashed, _ = device_forward(part, *BATCHES[0])
    server.step(0, smashed)
    weights = server.device_state(2)
    with pytest.raises(ModelError, match="outside the round"):
        server.step(5, smashed)
    with pytest.raises(ModelError, match="cannot commit"):
        server.commit({})
    bad = {
        **weights,
        next(iter(weights)): torch.full_like(
            next(iter(weights.values())), float("nan")
        ),
    }
    with pytest.raises(ModelError):
        server.commit({0: (bad, 10)})
    server.rollback()
    for name, value in student.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not server.optimizer.state
    with pytest.raises(ModelError, match="distinct"):
        server.begin_round(2, [0, 0])

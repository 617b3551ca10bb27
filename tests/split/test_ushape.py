"""The u-shape step equals the unsplit step at every cut; labels and ids never go up."""

import copy

import pytest
import torch

from splitkd_flwr.split.loss import KDLoss, topk_teacher
from splitkd_flwr.split.models import untie_embeddings
from splitkd_flwr.split.step import IGNORE_INDEX, make_labels, reference_step
from splitkd_flwr.split.ushape import (
    UP_FORWARD,
    ushape_device_backward,
    ushape_device_forward,
    ushape_device_loss,
    ushape_device_names,
    ushape_partition,
    ushape_server_backward,
    ushape_server_forward,
    ushape_server_names,
)
from tests.split.test_step import ATOL, PAIRS, RTOL, STUDENT_LAYERS, _batch, _pair

TEMPERATURE = 2.0


def _ushape_step(parts, optimizers, input_ids, mask, loss_fn, top_k):
    device_part, server_part, head = parts
    device_optimizer, server_optimizer = optimizers
    up, hidden = ushape_device_forward(device_part, input_ids, mask)
    pending, down = ushape_server_forward(server_part, up, top_k, TEMPERATURE)
    labels = make_labels(input_ids, mask)
    grad_top, loss, terms = ushape_device_loss(
        head, down, labels, mask, loss_fn, device_optimizer
    )
    grad_at_cut = ushape_server_backward(pending, grad_top, server_optimizer)
    ushape_device_backward(hidden, grad_at_cut, device_optimizer)
    return up, {**down}, grad_top, loss, terms


@pytest.mark.parametrize("top_k", [0, 5])
@pytest.mark.parametrize("arch", sorted(PAIRS))
@pytest.mark.parametrize("cut_layer", range(1, STUDENT_LAYERS))
def test_ushape_step_equals_reference_step(
    arch: str, cut_layer: int, top_k: int
) -> None:
    # Prepare: with top_k the reference is the unsplit step on the top-k KD loss
    teacher, student = _pair(arch)
    reference = copy.deepcopy(student)
    untie_embeddings(reference)
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    kd = KDLoss(alpha=0.5, temperature=TEMPERATURE)

    def reference_loss(student_logits, teacher_logits, labels):
        if top_k == 0:
            return kd(student_logits, teacher_logits, labels)
        return kd(
            student_logits, topk_teacher(teacher_logits, top_k, TEMPERATURE), labels
        )

    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    parts = ushape_partition(teacher, student, cut_layer)
    device_part, server_part, head = parts
    optimizers = (
        torch.optim.AdamW(
            [*device_part.student_parameters(), *head.parameters()], lr=1e-2
        ),
        torch.optim.AdamW(server_part.student_parameters(), lr=1e-2),
    )

    # Execute: two steps, so the Adam moments matter too
    for seed in (1, 2):
        input_ids, mask = _batch(seed)
        expected = reference_step(
            teacher, reference, input_ids, mask, reference_optimizer, reference_loss
        )
        up, _, _, loss, terms = _ushape_step(
            parts, optimizers, input_ids, mask, kd, top_k
        )

        # Assert
        assert loss == pytest.approx(expected.loss, rel=RTOL)
        assert terms.keys() == {"ce", "kd"}
        assert set(up) == set(UP_FORWARD)
    updated, split = reference.state_dict(), student.state_dict()
    for name, value in updated.items():
        assert not torch.equal(value, initial[name]), f"{name} was not trained"
        torch.testing.assert_close(split[name], value, rtol=RTOL, atol=ATOL, msg=name)
    device_names = set(ushape_device_names(student, cut_layer))
    server_names = set(ushape_server_names(student, cut_layer))
    assert device_names.isdisjoint(server_names)
    assert device_names | server_names == set(split)


def test_nothing_that_goes_up_is_a_direct_read_of_labels_or_ids() -> None:
    # Prepare
    teacher, student = _pair("llama")
    parts = ushape_partition(teacher, student, 2)
    device_part, server_part, head = parts
    optimizers = (
        torch.optim.AdamW([*device_part.student_parameters(), *head.parameters()]),
        torch.optim.AdamW(server_part.student_parameters()),
    )
    input_ids, mask = _batch(3)
    labels = make_labels(input_ids, mask)

    # Execute
    up, _, grad_top, _, _ = _ushape_step(
        parts, optimizers, input_ids, mask, KDLoss(), 4
    )

    # Assert: floats only, besides a 0/1 mask that says no more than the lengths
    for name, tensor in {**up, "grad_top": grad_top}.items():
        if name == "attention_mask":
            lengths = tensor.sum(-1, keepdim=True)
            assert torch.equal(tensor, (torch.arange(tensor.shape[1]) < lengths).long())
            continue
        assert tensor.is_floating_point(), name
        for secret in (input_ids, labels):
            assert tensor.shape[:2] != secret.shape or not torch.equal(
                tensor[..., 0].round().long(), secret
            ), name
    assert (labels != IGNORE_INDEX).any()

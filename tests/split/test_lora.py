"""LoRA (peft) and bf16-mixed split steps equal their unsplit steps; merging; adapters."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.split.lora import (
    LoraSpec,
    adapter_names,
    add_lora,
    plain_state_dict,
    trainable_names,
)
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.models import untie_embeddings
from splitkd_flwr.split.partition import device_param_names, partition
from splitkd_flwr.split.precision import enable_gradient_checkpointing
from splitkd_flwr.split.step import (
    device_backward,
    device_forward,
    reference_step,
    server_step,
)
from tests.split.test_step import PAIRS, STUDENT_LAYERS, _batch, _pair

RTOL, ATOL = 1e-5, 1e-8
SPEC = LoraSpec(rank=8, alpha=16.0)


def _lora_pair(arch: str, spec: LoraSpec = SPEC):
    teacher, student = _pair(arch)
    untie_embeddings(student)
    add_lora(student, spec)
    # lora_B starts at 0 (a no-op adapter); make it non-zero so the first step already
    # depends on every adapter, not only the second.
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    return teacher, student


def _split_vs_reference(arch, cut_layer, autocast_dtype, spec=SPEC):
    """Two split steps and two unsplit steps from equal starts; both students after."""
    teacher, student = _lora_pair(arch, spec) if spec else _pair(arch)
    if spec is None:
        untie_embeddings(student)
    reference = copy.deepcopy(student)
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    trainable = trainable_names(reference)
    reference_optimizer = torch.optim.AdamW(
        [p for p in reference.parameters() if p.requires_grad], lr=1e-2
    )
    device_part, server_part = partition(teacher, student, cut_layer)
    device_optimizer = torch.optim.AdamW(device_part.student_parameters(), lr=1e-2)
    server_optimizer = torch.optim.AdamW(server_part.student_parameters(), lr=1e-2)
    loss_fn = KDLoss(alpha=0.5, temperature=2.0)
    losses = []
    for seed in (1, 2):
        input_ids, mask = _batch(seed)
        expected = reference_step(
            teacher,
            reference,
            input_ids,
            mask,
            reference_optimizer,
            loss_fn,
            autocast_dtype,
        )
        smashed, hidden = device_forward(device_part, input_ids, mask, autocast_dtype)
        result = server_step(
            server_part, smashed, server_optimizer, loss_fn, autocast_dtype
        )
        device_backward(hidden, result.grad_at_cut, device_optimizer)
        losses.append((result.loss, expected.loss))
    return student, reference, initial, trainable, losses


@pytest.mark.parametrize("arch", sorted(PAIRS))
@pytest.mark.parametrize("cut_layer", range(1, STUDENT_LAYERS))
def test_lora_split_step_equals_unsplit_lora_step(arch: str, cut_layer: int) -> None:
    # Prepare / Execute
    student, reference, initial, trainable, losses = _split_vs_reference(
        arch, cut_layer, None
    )

    # Assert: only adapters train, and they train alike split and unsplit
    assert trainable and set(adapter_names(trainable)) == trainable
    for split_loss, expected_loss in losses:
        assert split_loss == pytest.approx(expected_loss, rel=RTOL)
    split, updated = student.state_dict(), reference.state_dict()
    assert split.keys() == updated.keys()
    for name, value in updated.items():
        if name in trainable:
            assert not torch.equal(value, initial[name]), f"{name} was not trained"
            assert value.dtype == torch.float32, f"{name} is not an fp32 master weight"
        else:
            assert torch.equal(value, initial[name]), f"frozen {name} changed"
        torch.testing.assert_close(split[name], value, rtol=RTOL, atol=ATOL, msg=name)


# bf16 has an 8-bit significand (relative spacing 2**-8 ~ 0.4 %). The split and unsplit
# steps run the same bf16 matmuls on the same inputs (on this CPU the two were measured
# bit-identical), but another backend may pick a different kernel for the segment's
# shapes, so one rounding step of a bf16 product (<= 0.4 % of it) can differ; after AdamW
# (whose update is ~lr * sign) a weight then differs by at most a few such steps. 2e-2 relative on the loss and 1e-2 relative + 1e-4 absolute
# (lr = 1e-2) on weights bound that; a wrong gradient (a missing term, a wrong cast) moves
# weights by ~lr = 1e-2 absolute and losses by far more.
BF16_LOSS_RTOL = 2e-2
BF16_RTOL, BF16_ATOL = 1e-2, 1e-4


@pytest.mark.parametrize("rank", [0, 8])
@pytest.mark.parametrize("arch", sorted(PAIRS))
@pytest.mark.parametrize("cut_layer", [1, STUDENT_LAYERS - 1])
def test_bf16_mixed_split_step_equals_unsplit_bf16_mixed_step(
    arch: str, cut_layer: int, rank: int
) -> None:
    # Prepare / Execute
    spec = LoraSpec(rank=rank) if rank else None
    student, reference, initial, trainable, losses = _split_vs_reference(
        arch, cut_layer, torch.bfloat16, spec
    )

    # Assert: fp32 master weights, trained alike within bf16's rounding
    for split_loss, expected_loss in losses:
        assert split_loss == pytest.approx(expected_loss, rel=BF16_LOSS_RTOL)
    split, updated = student.state_dict(), reference.state_dict()
    for name in trainable:
        assert updated[name].dtype == torch.float32
        assert not torch.equal(updated[name], initial[name]), name
        torch.testing.assert_close(
            split[name], updated[name], rtol=BF16_RTOL, atol=BF16_ATOL, msg=name
        )


@pytest.mark.parametrize("arch", sorted(PAIRS))
def test_merged_student_loads_without_peft_and_computes_the_same(arch: str) -> None:
    # Prepare: a LoRA student whose adapters are non-zero
    _, student = _lora_pair(arch)
    input_ids, mask = _batch(3)

    # Execute
    merged = plain_state_dict(student)
    plain = AutoModelForCausalLM.from_config(student.config)
    plain.load_state_dict(merged, strict=True)

    # Assert
    assert not adapter_names(merged) and not any(".base_layer." in k for k in merged)
    student.eval()
    plain.eval()
    with torch.no_grad():
        expected = student(input_ids, attention_mask=mask).logits
        got = plain(input_ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_device_side_of_a_lora_student_is_its_adapters_below_the_cut() -> None:
    # Prepare
    _, student = _lora_pair("llama")

    # Execute
    names = device_param_names(student, 2, trainable_only=True)

    # Assert: blocks 0 and 1, every default projection, A and B; no embedding
    assert names and set(adapter_names(names)) == set(names)
    blocks = {int(n.split(".")[2]) for n in names}
    assert blocks == {0, 1}
    assert len(names) == 2 * 7 * 2


def test_bad_lora_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="lora-alpha"):
        LoraSpec(rank=8, alpha=0)
    with pytest.raises(ConfigError, match="lora-dropout"):
        LoraSpec(rank=8, dropout=1.0)
    _, student = _pair("llama")
    with pytest.raises(ConfigError, match="lora-targets"):
        add_lora(student, LoraSpec(rank=4, targets=("no_such_proj",)))


@pytest.mark.parametrize("arch", sorted(PAIRS))
def test_gradient_checkpointing_changes_memory_not_the_step(arch: str) -> None:
    # Prepare: the split student recomputes its blocks in backward; the reference does not
    teacher, student = _lora_pair(arch)
    reference = copy.deepcopy(student)
    enable_gradient_checkpointing(student)
    device_part, server_part = partition(teacher, student, 2)
    device_optimizer = torch.optim.AdamW(device_part.student_parameters(), lr=1e-2)
    server_optimizer = torch.optim.AdamW(server_part.student_parameters(), lr=1e-2)
    reference_optimizer = torch.optim.AdamW(
        [p for p in reference.parameters() if p.requires_grad], lr=1e-2
    )
    loss_fn = KDLoss(alpha=0.5, temperature=2.0)
    input_ids, mask = _batch(1)

    # Execute
    expected = reference_step(
        teacher, reference, input_ids, mask, reference_optimizer, loss_fn
    )
    smashed, hidden = device_forward(device_part, input_ids, mask)
    result = server_step(server_part, smashed, server_optimizer, loss_fn)
    device_backward(hidden, result.grad_at_cut, device_optimizer)

    # Assert
    blocks = [m for m in student.modules() if getattr(m, "gradient_checkpointing", 0)]
    assert blocks, "no block recomputes its activations"
    assert result.loss == pytest.approx(expected.loss, rel=RTOL)
    updated = reference.state_dict()
    for name, value in student.state_dict().items():
        torch.testing.assert_close(value, updated[name], rtol=RTOL, atol=ATOL, msg=name)

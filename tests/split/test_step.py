"""Tests of the split step: equal to the unsplit step at every cut; the smashed data."""

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from splitkd_flwr.core.errors import SplitKDError
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.models import load_causal_lm, untie_embeddings
from splitkd_flwr.split.partition import device_param_names, partition
from splitkd_flwr.split.step import (
    IGNORE_INDEX,
    device_backward,
    device_forward,
    make_labels,
    reference_step,
    server_step,
)

VOCAB = 61
STUDENT_LAYERS = 5
# Equal within 1e-5 relative; the absolute floor only matters for entries near 0
# (a weight an update drove to ~1e-3 would otherwise be held to 1e-8).
RTOL, ATOL = 1e-5, 1e-8

LLAMA_TEACHER = {
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
}
LLAMA_STUDENT = {
    **LLAMA_TEACHER,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": STUDENT_LAYERS,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,  # like Llama-3.2-1B: exercises the untie
}
GPT2_TEACHER = {
    "model_type": "gpt2",
    "vocab_size": VOCAB,
    "n_embd": 48,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 64,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
GPT2_STUDENT = {**GPT2_TEACHER, "n_embd": 32, "n_layer": STUDENT_LAYERS}
PAIRS = {"llama": (LLAMA_TEACHER, LLAMA_STUDENT), "gpt2": (GPT2_TEACHER, GPT2_STUDENT)}

OPTIMIZERS: dict[
    str, Callable[[Iterator[torch.nn.Parameter]], torch.optim.Optimizer]
] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.5, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
}


def _pair(arch: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    teacher_config, student_config = PAIRS[arch]
    torch.manual_seed(0)
    return load_causal_lm(teacher_config), load_causal_lm(student_config)


def _batch(seed: int, lengths: tuple[int, ...] = (10, 7, 4)) -> tuple[Tensor, Tensor]:
    """Right-padded token ids (pad 0) and their mask, ``(B, T)`` each."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(
        3, VOCAB, (len(lengths), max(lengths)), generator=generator
    )
    mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    return input_ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("arch", sorted(PAIRS))
@pytest.mark.parametrize("cut_layer", range(1, STUDENT_LAYERS))
def test_split_step_equals_reference_step(
    arch: str, optimizer: str, cut_layer: int
) -> None:
    # Prepare
    teacher, student = _pair(arch)
    reference = copy.deepcopy(student)
    untie_embeddings(
        reference
    )  # the split trains an untied student; compare like with like
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    make_optimizer = OPTIMIZERS[optimizer]
    reference_optimizer = make_optimizer(reference.parameters())
    device_part, server_part = partition(teacher, student, cut_layer)
    device_optimizer = make_optimizer(device_part.student_parameters())
    server_optimizer = make_optimizer(server_part.student_parameters())
    loss_fn = KDLoss(alpha=0.5, temperature=2.0)

    # Execute: two steps, so the optimizers' state (momentum, Adam moments) matters too
    for seed in (1, 2):
        input_ids, mask = _batch(seed)
        expected = reference_step(
            teacher, reference, input_ids, mask, reference_optimizer, loss_fn
        )
        smashed, hidden = device_forward(device_part, input_ids, mask)
        result = server_step(server_part, smashed, server_optimizer, loss_fn)
        device_backward(hidden, result.grad_at_cut, device_optimizer)

        # Assert
        assert result.loss == pytest.approx(expected.loss, rel=RTOL)
        assert result.terms.keys() == expected.terms.keys() == {"ce", "kd"}
    updated, split = reference.state_dict(), student.state_dict()
    assert split.keys() == updated.keys()
    for name, value in updated.items():
        assert not torch.equal(value, initial[name]), f"{name} was not trained"
        torch.testing.assert_close(split[name], value, rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("arch", sorted(PAIRS))
@pytest.mark.parametrize("padding", ["right", "left"])
def test_split_logits_equal_whole_model_logits_on_real_tokens(
    arch: str, padding: str
) -> None:
    # Prepare: one sequence alone, and the same sequence padded by 3
    teacher, student = _pair(arch)
    device_part, server_part = partition(teacher, student, 2)
    sequence = torch.randint(3, VOCAB, (1, 6))
    pad = torch.zeros(1, 3, dtype=torch.long)
    padded = torch.cat(
        [sequence, pad] if padding == "right" else [pad, sequence], dim=1
    )
    real = padded != 0
    alone = slice(0, 6) if padding == "right" else slice(3, 9)

    # Execute
    with torch.no_grad():
        student_expected = student(sequence).logits  # (1, 6, V)
        teacher_expected = teacher(sequence).logits  # (1, 6, V)
        teacher_embeds, hidden = device_part(padded, real.long())
        student_logits, teacher_logits = server_part(
            teacher_embeds, hidden, real.long()
        )

    # Assert
    torch.testing.assert_close(
        student_logits[:, alone], student_expected, rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        teacher_logits[:, alone], teacher_expected, rtol=1e-5, atol=1e-6
    )


def test_make_labels_targets_next_real_token_only() -> None:
    # Prepare: a right-padded row, a left-padded row, a full row
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    input_ids = torch.arange(15).view(3, 5).masked_fill(mask == 0, 0)

    # Execute
    labels = make_labels(input_ids, mask)

    # Assert
    for b in range(3):
        for t in range(5):
            has_next = t + 1 < 5 and bool(mask[b, t]) and bool(mask[b, t + 1])
            expected = int(input_ids[b, t + 1]) if has_next else IGNORE_INDEX
            assert int(labels[b, t]) == expected, (b, t)


def test_smashed_data_is_detached_and_hidden_keeps_the_graph() -> None:
    # Prepare
    teacher, student = _pair("llama")
    device_part, _ = partition(teacher, student, 3)
    input_ids, mask = _batch(1)

    # Execute
    smashed, hidden = device_forward(device_part, input_ids, mask)

    # Assert
    batch, seq = input_ids.shape
    assert smashed.teacher_embeds.shape == (batch, seq, teacher.config.hidden_size)
    assert smashed.student_hidden.shape == (batch, seq, student.config.hidden_size)
    assert (
        not smashed.teacher_embeds.requires_grad
        and not smashed.student_hidden.requires_grad
    )
    assert hidden.requires_grad and torch.equal(hidden.detach(), smashed.student_hidden)
    assert torch.equal(smashed.labels, make_labels(input_ids, mask))
    expected_bytes = sum(
        t.numel() * t.element_size() for t in smashed.tensors().values()
    )
    assert smashed.num_bytes() == expected_bytes > 0


def test_server_step_trains_only_the_server_side_and_leaves_the_teacher() -> None:
    # Prepare
    teacher, student = _pair("gpt2")
    cut_layer = 2
    device_part, server_part = partition(teacher, student, cut_layer)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    smashed, _ = device_forward(device_part, *_batch(1))
    optimizer = torch.optim.SGD(server_part.student_parameters(), lr=0.5)

    # Execute
    result = server_step(server_part, smashed, optimizer, KDLoss())

    # Assert
    after = student.state_dict()
    device_names = set(device_param_names(student, cut_layer))
    for name in after:
        changed = not torch.equal(after[name], before[name])
        assert changed == (name not in device_names), name
    assert all(
        torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items()
    )
    assert all(p.grad is None for p in teacher.parameters())
    assert result.grad_at_cut.shape == smashed.student_hidden.shape


def test_server_step_takes_fp16_smashed_data_and_returns_fp16_gradient() -> None:
    # Prepare: what a codec that casts floats to fp16 delivers
    teacher, student = _pair("llama")
    device_part, server_part = partition(teacher, student, 2)
    smashed, hidden = device_forward(device_part, *_batch(1))
    smashed.teacher_embeds = smashed.teacher_embeds.half()
    smashed.student_hidden = smashed.student_hidden.half()
    optimizer = torch.optim.SGD(server_part.student_parameters(), lr=0.1)

    # Execute
    result = server_step(server_part, smashed, optimizer, KDLoss())
    device_backward(
        hidden, result.grad_at_cut, torch.optim.SGD(device_part.student_parameters())
    )

    # Assert
    assert result.grad_at_cut.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert all(p.grad is not None for p in device_part.student_parameters())


def test_step_accepts_a_plain_tensor_loss() -> None:
    # Prepare
    teacher, student = _pair("llama")
    device_part, server_part = partition(teacher, student, 1)
    smashed, _ = device_forward(device_part, *_batch(1))

    def kl_only(
        student_logits: Tensor, teacher_logits: Tensor, labels: Tensor
    ) -> Tensor:
        keep = labels != IGNORE_INDEX  # (B, T)
        log_p = F.log_softmax(student_logits[keep], -1)  # (N, V)
        log_q = F.log_softmax(teacher_logits[keep], -1)  # (N, V)
        return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")

    # Execute
    optimizer = torch.optim.SGD(server_part.student_parameters(), lr=0.1)
    result = server_step(server_part, smashed, optimizer, kl_only)

    # Assert
    assert result.terms == {} and result.loss > 0


@pytest.mark.parametrize(
    ("loss_value", "match"),
    [
        (lambda s: s.sum() * float("nan"), "Non-finite loss"),
        (lambda s: [s.sum()], "expected a Tensor"),
    ],
)
def test_bad_loss_fails_the_step_before_any_weight_changes(
    loss_value: Callable[[Tensor], object], match: str
) -> None:
    # Prepare
    teacher, student = _pair("llama")
    device_part, server_part = partition(teacher, student, 2)
    smashed, _ = device_forward(device_part, *_batch(1))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.SGD(server_part.student_parameters(), lr=0.1)

    # Execute / Assert
    with pytest.raises(SplitKDError, match=match):
        server_step(server_part, smashed, optimizer, lambda s, t, y: loss_value(s))
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_split_step_from_save_pretrained_directories(tmp_path) -> None:
    # Prepare: the path users take with Llama-3.1-8B / Llama-3.2-1B, at toy size
    teacher, student = _pair("llama")
    teacher.save_pretrained(tmp_path / "teacher")
    student.save_pretrained(tmp_path / "student")
    teacher = load_causal_lm(tmp_path / "teacher")
    student = load_causal_lm(str(tmp_path / "student"))
    device_part, server_part = partition(teacher, student, 2)
    device_optimizer = torch.optim.AdamW(device_part.student_parameters(), lr=1e-2)
    server_optimizer = torch.optim.AdamW(server_part.student_parameters(), lr=1e-2)
    input_ids, mask = _batch(1)

    # Execute: two steps on one batch, then save and reload the trained student
    losses = []
    for _ in range(2):
        smashed, hidden = device_forward(device_part, input_ids, mask)
        result = server_step(server_part, smashed, server_optimizer, KDLoss())
        device_backward(hidden, result.grad_at_cut, device_optimizer)
        losses.append(result.loss)
    student.save_pretrained(tmp_path / "trained")
    reloaded = load_causal_lm(tmp_path / "trained")

    # Assert
    assert losses[1] < losses[0]
    assert not reloaded.config.tie_word_embeddings
    for name, value in student.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name

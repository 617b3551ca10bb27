"""Placement (`server-device` / `torch-device`) and precision (`teacher-dtype`, bf16-mixed)."""

import pytest
import torch

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.split.partition import build_device_student, partition
from splitkd_flwr.split.placement import (
    module_device,
    resolve_device,
    to_device,
    to_host,
)
from splitkd_flwr.split.precision import autocast_dtype, teacher_dtype
from splitkd_flwr.split.step import device_forward
from tests.split.test_step import _batch, _pair


def test_auto_is_the_cpu_on_a_machine_without_accelerators() -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device("cuda:0", "torch-device")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "", "cpu:0", "meta"])
def test_malformed_device_specs_are_config_errors_naming_the_key(spec: str) -> None:
    with pytest.raises(ConfigError, match="torch-device"):
        resolve_device(spec, "torch-device")


def test_frames_stay_in_place_on_the_cpu() -> None:
    tensor = torch.randn(2, 3)
    assert to_device(tensor, torch.device("cpu")) is tensor
    assert to_host(tensor) is tensor


def test_teacher_dtype_auto_is_fp32_on_the_cpu_and_names_are_honoured() -> None:
    cpu = torch.device("cpu")
    assert teacher_dtype("auto", cpu) == torch.float32
    assert teacher_dtype("bf16", cpu) == torch.bfloat16
    assert teacher_dtype("fp16", cpu) == torch.float16
    with pytest.raises(ConfigError, match="teacher-dtype"):
        teacher_dtype("int8", cpu)
    with pytest.raises(ConfigError, match="train-precision"):
        autocast_dtype("fp16-mixed")


def test_device_student_on_meta_allocates_only_its_side() -> None:
    # Prepare
    _, student = _pair("llama")

    # Execute: a device student built for cut 2
    device_student = build_device_student(student.config, 2, device="cpu")

    # Assert: embeddings and blocks 0-1 on the CPU, the rest never allocated
    on = {n: p.device.type for n, p in device_student.named_parameters()}
    assert on["model.embed_tokens.weight"] == "cpu"
    assert all(v == "cpu" for n, v in on.items() if n.startswith("model.layers.1."))
    assert all(v == "meta" for n, v in on.items() if n.startswith("model.layers.2."))
    assert on["lm_head.weight"] == "meta"


def test_bf16_mixed_forward_runs_in_bf16_and_keeps_fp32_weights() -> None:
    # Prepare
    teacher, student = _pair("llama")
    device_part, _ = partition(teacher, student, 2)
    input_ids, mask = _batch(1)

    # Execute
    fp32, _ = device_forward(device_part, input_ids, mask)
    bf16, hidden = device_forward(device_part, input_ids, mask, torch.bfloat16)

    # Assert: autocast changed the numbers (by bf16 rounding), not the weights
    assert module_device(device_part) == torch.device("cpu")
    difference = (bf16.student_hidden.float() - fp32.student_hidden).abs().max()
    assert 0 < difference < 0.1 * fp32.student_hidden.abs().max()
    assert all(p.dtype == torch.float32 for p in device_part.student_parameters())
    assert hidden.requires_grad

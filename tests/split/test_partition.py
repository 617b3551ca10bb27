"""Tests of the partition: what each part holds, the cut's range, weight exchange."""

import pytest
import torch
from transformers import LlamaConfig

from splitkd_flwr.core.errors import CutLayerError, ModelError
from splitkd_flwr.split.models import load_causal_lm, untie_embeddings
from splitkd_flwr.split.partition import (
    DevicePart,
    build_device_student,
    device_param_names,
    partition,
    server_param_names,
)

LLAMA = {
    "model_type": "llama",
    "vocab_size": 50,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
}
LLAMA_WIDE = {
    **LLAMA,
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
}


def _llama3(hidden: int, intermediate: int, layers: int, tie: bool) -> LlamaConfig:
    """A Llama 3 shape: 128256 tokens, 32 query heads sharing 8 key/value heads."""
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=tie,
    )


def _block_size(config: LlamaConfig) -> int:
    """Parameters of one Llama block, from its config alone."""
    d, ff = config.hidden_size, config.intermediate_size
    kv = d // config.num_attention_heads * config.num_key_value_heads
    return 2 * d * d + 2 * d * kv + 3 * d * ff + 2 * d  # q,o + k,v + mlp + two RMSNorms


def _count(params) -> int:
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("cut_layer", [0, 4, -1, 5])
def test_cut_layer_out_of_range_states_the_allowed_range(cut_layer: int) -> None:
    teacher, student = load_causal_lm(LLAMA_WIDE), load_causal_lm(LLAMA)
    with pytest.raises(
        CutLayerError, match=rf"Cut layer {cut_layer} .* 4 layers can be cut at 1\.\.3"
    ):
        partition(teacher, student, cut_layer)
    with pytest.raises(CutLayerError):
        device_param_names(student, cut_layer)


@pytest.mark.parametrize("cut_layer", [1, 2, 3])
def test_device_part_holds_teacher_embedding_and_student_below_the_cut(
    cut_layer: int,
) -> None:
    # Prepare
    teacher, student = load_causal_lm(LLAMA_WIDE), load_causal_lm(LLAMA)
    teacher_config, student_config = teacher.config, student.config

    # Execute
    device_part, server_part = partition(teacher, student, cut_layer)

    # Assert: counts from the configs; the parts share (not copy) the student's weights
    vocab, d_s = student_config.vocab_size, student_config.hidden_size
    student_device = vocab * d_s + cut_layer * _block_size(student_config)
    assert (
        _count(device_part.parameters())
        == vocab * teacher_config.hidden_size + student_device
    )
    assert _count(device_part.student_parameters()) == student_device
    assert (
        _count(server_part.student_parameters())
        == _count(student.parameters()) - student_device
    )
    student_ids = {id(p) for p in student.parameters()}
    assert {id(p) for p in device_part.student_parameters()} <= student_ids
    assert {id(p) for p in server_part.student_parameters()} <= student_ids
    assert device_part.teacher_embedding.weight is teacher.get_input_embeddings().weight


def test_device_part_of_an_8b_teacher_holds_only_its_embedding_table() -> None:
    # Prepare: Llama-3.1-8B and Llama-3.2-1B shapes on the meta device (no memory)
    teacher_config = _llama3(hidden=4096, intermediate=14336, layers=32, tie=False)
    student_config = _llama3(hidden=2048, intermediate=8192, layers=16, tie=True)
    with torch.device("meta"):
        teacher, student = (
            load_causal_lm(teacher_config),
            load_causal_lm(student_config),
        )
    cut_layer = 4

    # Execute
    device_part = DevicePart.from_parts(
        teacher.get_input_embeddings(), student, cut_layer
    )

    # Assert
    teacher_on_device = _count(device_part.teacher_embedding.parameters())
    assert teacher_on_device == 128256 * 4096
    assert (
        _count(teacher.parameters()) > 15 * teacher_on_device
    )  # the rest stays on the server
    assert _count(
        device_part.student_parameters()
    ) == 128256 * 2048 + cut_layer * _block_size(student_config)


GPT2_SMALL = {
    "model_type": "gpt2",
    "vocab_size": 50,
    "n_layer": 4,
    "n_embd": 32,
    "n_head": 4,
}


@pytest.mark.parametrize("config", [LLAMA, GPT2_SMALL], ids=["llama", "gpt2"])
def test_param_names_split_the_state_dict_at_the_cut(config) -> None:
    # Prepare
    student = load_causal_lm(config)
    untie_embeddings(student)  # GPT-2 ties by default
    keys = set(student.state_dict())
    head_names = {
        "lm_head.weight",
        "model.norm.weight",
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
    }

    for cut_layer in (1, 2, 3):
        # Execute
        device = device_param_names(student, cut_layer)
        server = server_param_names(student, cut_layer)

        # Assert
        assert set(device).isdisjoint(server) and set(device) | set(server) == keys
        block_of = {
            name: int(name.split(".")[2])
            for name in keys
            if name.split(".")[1] in ("layers", "h")
        }
        assert {n for n in device if n in block_of} == {
            n for n, i in block_of.items() if i < cut_layer
        }
        embeddings = {n for n in device if n not in block_of}
        assert embeddings and all(
            n.endswith(("embed_tokens.weight", "wte.weight", "wpe.weight"))
            for n in embeddings
        )
        assert head_names & keys <= set(server)


def test_param_names_refuse_a_tied_student() -> None:
    with pytest.raises(ModelError, match="untie"):
        device_param_names(load_causal_lm({**LLAMA, "tie_word_embeddings": True}), 1)


def test_student_state_dict_round_trips_through_the_device_part() -> None:
    # Prepare: a server-side student and a device-side copy built from the same config
    teacher = load_causal_lm(LLAMA_WIDE)
    server_student, device_student = load_causal_lm(LLAMA), load_causal_lm(LLAMA)
    device_part = DevicePart.from_parts(
        teacher.get_input_embeddings(), device_student, 2
    )
    server_state = server_student.state_dict()
    sent = {name: server_state[name] for name in device_param_names(server_student, 2)}

    # Execute
    device_part.student.load_student_state_dict(sent)
    returned = device_part.student.student_state_dict()

    # Assert
    assert returned.keys() == sent.keys()
    assert all(torch.equal(returned[k], v) for k, v in sent.items())
    with pytest.raises(ModelError, match="missing"):
        device_part.student.load_student_state_dict(
            {k: v for k, v in sent.items() if "layers.1." not in k}
        )


@pytest.mark.parametrize("config", [LLAMA, GPT2_SMALL], ids=["llama", "gpt2"])
def test_device_student_allocates_only_below_the_cut_and_matches_the_full_one(
    config,
) -> None:
    # Prepare: the server's student, and a device's built from its config alone
    server_student = load_causal_lm(config)
    untie_embeddings(server_student)
    teacher_embedding = torch.nn.Embedding(50, 48)
    cut_layer = 2
    sent = {
        name: server_student.state_dict()[name]
        for name in device_param_names(server_student, cut_layer)
    }
    input_ids, mask = torch.randint(1, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0

    # Execute
    device_student = build_device_student(server_student.config, cut_layer)
    device_part = DevicePart.from_parts(teacher_embedding, device_student, cut_layer)
    device_part.student.load_student_state_dict(sent)
    full_part = DevicePart.from_parts(teacher_embedding, server_student, cut_layer)
    with torch.no_grad():  # in eval mode: GPT-2's dropout is on by default
        _, hidden = device_part.eval()(input_ids, mask)
        _, expected = full_part.eval()(input_ids, mask)

    # Assert
    real = [p for p in device_student.parameters() if not p.is_meta]
    assert _count(real) == _count(device_part.student_parameters())
    assert _count(real) < _count(server_student.parameters())
    torch.testing.assert_close(hidden, expected, rtol=1e-6, atol=1e-6)

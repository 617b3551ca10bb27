"""Tests of loading, pairing and partitioning teacher and student models."""

import logging

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import BertConfig, LlamaConfig, PreTrainedTokenizerFast, T5Config

from splitkd_flwr.errors import CutLayerError, ModelError
from splitkd_flwr.split.adapters import SUPPORTED_MODEL_TYPES
from splitkd_flwr.split.models import (
    check_pair,
    load_causal_lm,
    load_teacher_embedding,
    save_teacher_embedding,
    untie_embeddings,
)
from splitkd_flwr.split.partition import (
    DevicePart,
    build_device_student,
    device_param_names,
    partition,
    server_param_names,
)


def _llama(
    vocab: int = 50, hidden: int = 32, layers: int = 4, tie: bool = False
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        pad_token_id=0,
    )


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


@pytest.mark.parametrize(
    ("model_type", "extra"),
    [
        (
            "llama",
            {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4},
        ),
        (
            "qwen2",
            {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4},
        ),
        (
            "qwen3",
            {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4},
        ),
        (
            "mistral",
            {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4},
        ),
        ("gpt2", {"n_layer": 2, "n_embd": 32, "n_head": 4}),
    ],
)
def test_load_causal_lm_builds_every_supported_family_from_a_dict(
    model_type, extra
) -> None:
    # Execute
    model = load_causal_lm(
        {"model_type": model_type, "vocab_size": 40, **extra}, dtype=torch.float64
    )

    # Assert
    assert model.config.model_type == model_type
    assert model.config.vocab_size == 40
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_load_causal_lm_reads_a_save_pretrained_directory(tmp_path) -> None:
    # Prepare
    model = load_causal_lm(_llama())
    model.save_pretrained(tmp_path)

    # Execute
    loaded = load_causal_lm(tmp_path)

    # Assert
    assert type(loaded) is type(model)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_missing_path_names_the_path(tmp_path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match="no-such-model.*does not exist"):
        load_causal_lm(missing)
    with pytest.raises(ModelError, match="has no config.json"):
        load_causal_lm(tmp_path)


@pytest.mark.parametrize(
    ("source", "name"),
    [
        (
            BertConfig(
                vocab_size=40,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
            ),
            "bert",
        ),
        ({"model_type": "t5", "vocab_size": 40}, "t5"),
    ],
)
def test_unsupported_architecture_is_named_with_the_supported_ones(
    source, name
) -> None:
    with pytest.raises(ModelError, match=f"Unsupported architecture '{name}'") as error:
        load_causal_lm(source)
    assert all(model_type in str(error.value) for model_type in SUPPORTED_MODEL_TYPES)


def test_unsupported_architecture_on_disk_is_refused(tmp_path) -> None:
    T5Config(vocab_size=40).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="Unsupported architecture 't5'"):
        load_causal_lm(tmp_path)


def test_vocab_mismatch_states_both_sizes() -> None:
    teacher, student = (
        load_causal_lm(_llama(vocab=50)),
        load_causal_lm(_llama(vocab=60)),
    )
    with pytest.raises(
        ModelError, match="teacher vocab_size 50, student vocab_size 60"
    ):
        check_pair(teacher, student)
    with pytest.raises(ModelError, match="vocab"):
        partition(teacher, student, 1)


def _tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate(["[UNK]", *words])}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    )


def test_tokenizer_mismatch_is_refused() -> None:
    teacher, student = load_causal_lm(_llama()), load_causal_lm(_llama())
    ab, abc, ba = (
        _tokenizer(["a", "b"]),
        _tokenizer(["a", "b", "c"]),
        _tokenizer(["b", "a"]),
    )
    check_pair(
        teacher, student, teacher_tokenizer=ab, student_tokenizer=_tokenizer(["a", "b"])
    )
    with pytest.raises(ModelError, match="teacher has 3 tokens, student has 4"):
        check_pair(teacher, student, teacher_tokenizer=ab, student_tokenizer=abc)
    with pytest.raises(ModelError, match="different ids"):
        check_pair(teacher, student, teacher_tokenizer=ab, student_tokenizer=ba)


@pytest.mark.parametrize("cut_layer", [0, 4, -1, 5])
def test_cut_layer_out_of_range_states_the_allowed_range(cut_layer: int) -> None:
    teacher, student = load_causal_lm(_llama()), load_causal_lm(_llama(layers=4))
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
    teacher_config, student_config = (
        _llama(hidden=48, layers=2),
        _llama(hidden=32, layers=4),
    )
    teacher, student = load_causal_lm(teacher_config), load_causal_lm(student_config)

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


def test_partition_unties_a_tied_student_once_and_it_saves_untied(
    tmp_path, caplog
) -> None:
    # Prepare
    teacher, student = load_causal_lm(_llama()), load_causal_lm(_llama(tie=True))
    embedding = student.get_input_embeddings().weight
    assert student.get_output_embeddings().weight is embedding

    # Execute
    with caplog.at_level(logging.WARNING, logger="splitkd_flwr.split.models"):
        partition(teacher, student, 2)
        partition(teacher, student, 3)
    head = student.get_output_embeddings().weight
    with torch.no_grad():
        head.add_(1.0)  # train the head apart from the embedding
    student.save_pretrained(tmp_path)
    reloaded = load_causal_lm(tmp_path)

    # Assert
    assert head is not embedding and not student.config.tie_word_embeddings
    assert torch.equal(head, embedding + 1.0)
    assert sum("Untied" in record.getMessage() for record in caplog.records) == 1
    assert torch.equal(reloaded.get_output_embeddings().weight, head)
    assert torch.equal(reloaded.get_input_embeddings().weight, embedding)


GPT2_SMALL = {
    "model_type": "gpt2",
    "vocab_size": 50,
    "n_layer": 4,
    "n_embd": 32,
    "n_head": 4,
}


@pytest.mark.parametrize(
    "config", [_llama(layers=4), GPT2_SMALL], ids=["llama", "gpt2"]
)
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
        device_param_names(load_causal_lm(_llama(tie=True)), 1)


def test_teacher_embedding_round_trips_and_builds_a_device_part(tmp_path) -> None:
    # Prepare
    teacher, student = (
        load_causal_lm(_llama(hidden=48)),
        load_causal_lm(_llama(hidden=32)),
    )
    path = save_teacher_embedding(teacher, tmp_path / "teacher-embedding.safetensors")
    input_ids = torch.randint(1, 50, (2, 5))

    # Execute
    embedding = load_teacher_embedding(path)
    device_part = DevicePart.from_parts(embedding, student, 2)
    teacher_embeds, student_hidden = device_part(input_ids, torch.ones_like(input_ids))

    # Assert
    assert not embedding.weight.requires_grad
    assert torch.equal(
        teacher_embeds, teacher.get_input_embeddings()(input_ids).detach()
    )
    assert student_hidden.shape == (2, 5, 32)
    with pytest.raises(ModelError, match="does not exist"):
        load_teacher_embedding(tmp_path / "missing.safetensors")
    with pytest.raises(
        ModelError, match="teacher embedding has 50 rows, student vocab_size 60"
    ):
        DevicePart.from_parts(embedding, load_causal_lm(_llama(vocab=60)), 1)


def test_student_state_dict_round_trips_through_the_device_part() -> None:
    # Prepare: a server-side student and a device-side copy built from the same config
    teacher = load_causal_lm(_llama(hidden=48))
    server_student, device_student = load_causal_lm(_llama()), load_causal_lm(_llama())
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


@pytest.mark.parametrize(
    "config", [_llama(layers=4), GPT2_SMALL], ids=["llama", "gpt2"]
)
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

"""Tests of loading and pairing models, untying heads, storing the teacher embedding."""

import logging

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import BertConfig, LlamaConfig, PreTrainedTokenizerFast, T5Config

from splitkd_flwr.core.errors import ModelError
from splitkd_flwr.split import models
from splitkd_flwr.split.adapters import SUPPORTED_MODEL_TYPES
from splitkd_flwr.split.models import (
    check_pair,
    load_causal_lm,
    load_teacher_embedding,
    save_teacher_embedding,
)
from splitkd_flwr.split.partition import DevicePart, partition


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


def test_partition_unties_a_tied_student_once_and_it_saves_untied(
    tmp_path, caplog, monkeypatch
) -> None:
    # Prepare: a process that has untied nothing yet
    monkeypatch.setattr(models, "_UNTIED_CLASSES", set())
    teacher, student = load_causal_lm(_llama()), load_causal_lm(_llama(tie=True))
    another = load_causal_lm(_llama(tie=True))
    embedding = student.get_input_embeddings().weight
    assert student.get_output_embeddings().weight is embedding

    # Execute
    with caplog.at_level(logging.DEBUG, logger="splitkd_flwr.split.models"):
        partition(teacher, student, 2)
        partition(teacher, student, 3)  # already untied: nothing to do
        partition(teacher, another, 1)  # a second model of the class: no new warning
    head = student.get_output_embeddings().weight
    with torch.no_grad():
        head.add_(1.0)  # train the head apart from the embedding
    student.save_pretrained(tmp_path)
    reloaded = load_causal_lm(tmp_path)

    # Assert
    assert head is not embedding and not student.config.tie_word_embeddings
    assert torch.equal(head, embedding + 1.0)
    untied = [record.levelno for record in caplog.records if "Untied" in record.message]
    assert untied == [logging.WARNING, logging.DEBUG]
    assert torch.equal(reloaded.get_output_embeddings().weight, head)
    assert torch.equal(reloaded.get_input_embeddings().weight, embedding)


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

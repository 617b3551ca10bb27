"""Tests of the shared byte-level BPE tokenizer."""

import pytest
from transformers import AutoTokenizer

from splitkd_flwr.core.errors import ConfigError, ModelError
from splitkd_flwr.data.corpus import generate_corpus
from splitkd_flwr.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    load_tokenizer,
    train_tokenizer,
)

TEXTS = [d.text for d in generate_corpus(500)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


def test_specials_have_the_ids_the_configs_use(tokenizer) -> None:
    ids = (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    )

    assert ids == (PAD_ID, BOS_ID, EOS_ID, UNK_ID)
    assert len(tokenizer) == 400


UNSEEN = ["Navigate to Zürich, call Søren 🚗!", "  two  spaces\tand tab"]


@pytest.mark.parametrize("text", [TEXTS[0], *UNSEEN])
def test_round_trip_is_exact_even_for_unseen_text(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    assert UNK_ID not in ids
    assert tokenizer.decode(ids) == text


def test_merges_learn_the_corpus(tokenizer) -> None:
    # The corpus's frequent words become single tokens; a rare one is spelt out.
    frequent = tokenizer.tokenize(" Assistant: Driver:")
    rare = tokenizer.tokenize(" Xylophone")

    assert len(frequent) == 4  # "ĠAssistant", ":", "ĠDriver", ":"
    assert len(rare) > 3


def test_training_is_deterministic(tokenizer) -> None:
    assert train_tokenizer(TEXTS, vocab_size=400).get_vocab() == tokenizer.get_vocab()


def test_save_and_load(tokenizer, tmp_path) -> None:
    tokenizer.save_pretrained(tmp_path)

    ours = load_tokenizer(tmp_path)
    auto = AutoTokenizer.from_pretrained(tmp_path)

    for loaded in (ours, auto):
        assert loaded(TEXTS[2])["input_ids"] == tokenizer(TEXTS[2])["input_ids"]
        assert loaded.pad_token_id == PAD_ID and loaded.eos_token_id == EOS_ID


def test_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="100"):
        train_tokenizer(TEXTS, vocab_size=100)
    with pytest.raises(ModelError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")

"""The architecture adapters call transformers' current API: no deprecation warnings per batch."""

import warnings

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from splitkd_flwr.split.partition import partition

VOCAB = 40


def _llama(hidden: int, layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _gpt2(hidden: int, layers: int) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=hidden, n_layer=layers, n_head=2, n_positions=32
    )
    return GPT2LMHeadModel(config)


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_split_forward_raises_no_future_or_deprecation_warning(build) -> None:
    # Prepare
    teacher, student = build(16, 2), build(8, 3)
    device_part, server_part = partition(teacher, student, 1)
    input_ids = torch.randint(1, VOCAB, (2, 6))
    attention_mask = torch.ones_like(input_ids)

    # Execute
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        teacher_embeds, hidden = device_part(input_ids, attention_mask)
        server_part(teacher_embeds, hidden, attention_mask)

    # Assert
    noisy = [
        str(w.message)
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
    ]
    assert noisy == []

"""KOALA's models: shapes, and a default large model that has not seen the clients' data."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.corpus import generate_corpus
from splitkd_flwr.data.knowledge import knowledge_split
from splitkd_flwr.data.loading import encode_documents, iterate_batches
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.koala.models import DEFAULT_SMALL, parse_shape
from splitkd_flwr.koala.run import koala_models, prompt_ids, prompt_rows
from splitkd_flwr.koala.transfer import count_parameters
from splitkd_flwr.split.evaluate import evaluate_lm
from tests.apps.tiny import save_tiny_pair

SPLIT = knowledge_split(
    2,
    documents=generate_corpus(1200, seed=3),
    held_out_documents=40,
    prompt_documents=40,
)


def test_shapes_parse_and_bad_ones_are_refused() -> None:
    assert parse_shape("48x1x4") == (48, 1, 4)
    assert parse_shape("default") == parse_shape(DEFAULT_SMALL)
    assert parse_shape("/models/small-a") is None
    with pytest.raises(ConfigError, match="multiple"):
        parse_shape("30x2x4")


def test_default_large_model_is_untrained_and_smalls_are_heterogeneous_and_40x_smaller() -> (
    None
):
    # Execute
    config = RunConfig(mode="koala", student="16x2x2,24x1x2")
    large, smalls, tokenizer = koala_models(config, SPLIT)
    # Assert: an untrained large model is near-uniform on client-topic text
    held_out = list(
        iterate_batches(encode_documents(SPLIT.held_out, tokenizer, 48), 16)
    )
    assert evaluate_lm(large, held_out)["perplexity"] > 0.5 * len(tokenizer)
    assert [s.config.hidden_size for s in smalls] == [16, 24]
    assert all(
        s.config.vocab_size == large.config.vocab_size == len(tokenizer) for s in smalls
    )
    ratios = [count_parameters(large) / count_parameters(s) for s in smalls]
    assert all(30 < r < 60 for r in ratios)


def test_large_and_small_models_can_also_come_from_directories(tmp_path: Path) -> None:
    large_dir, small_dir = save_tiny_pair(tmp_path, student_layers=1)
    config = RunConfig(
        mode="koala", teacher=str(large_dir), student=f"{small_dir},8x1x2"
    )
    large, smalls, tokenizer = koala_models(config, SPLIT)
    assert large.config.hidden_size == 32
    assert [s.config.hidden_size for s in smalls] == [16, 8]
    # prompts become bos + prompt rows with no eos: the answer is missing, not ended
    ids = prompt_ids(SPLIT.proxy_prompts[:3], tokenizer)
    rows = prompt_rows(ids, 48, tokenizer.pad_token_id)
    assert all(
        row[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in row
        for row in ids
    )
    assert rows.attention_mask.sum(1).tolist() == [len(row) for row in ids]

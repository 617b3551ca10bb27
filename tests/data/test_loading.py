"""Tests of local text loading, fixed-length examples and batching."""

import json

import pytest
import torch

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.corpus import generate_corpus
from splitkd_flwr.data.loading import (
    encode_documents,
    iterate_batches,
    iterate_steps,
    load_examples,
    read_documents,
)
from splitkd_flwr.data.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer((d.text for d in generate_corpus(300)), vocab_size=350)


def test_reads_txt_jsonl_and_folders(tmp_path) -> None:
    # Prepare
    (tmp_path / "a.txt").write_text("first line\n\n  second line  \n")
    sub = tmp_path / "sub"
    sub.mkdir()
    records = [{"text": "from json", "id": 1}, {"text": "another"}]
    (sub / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (tmp_path / "ignored.csv").write_text("not,text\n")

    # Execute
    from_txt = read_documents(tmp_path / "a.txt")
    from_jsonl = read_documents(sub / "b.jsonl")
    from_dir = read_documents(tmp_path)

    # Assert
    assert from_txt == ["first line", "second line"]
    assert from_jsonl == ["from json", "another"]
    assert from_dir == from_txt + from_jsonl


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{"txt": "no"}\n', "bad.jsonl:2"),
        ("broken.jsonl", "{not json\n", "broken.jsonl:1"),
        ("data.csv", "a,b\n", "unsupported"),
    ],
)
def test_bad_files_raise_config_error(tmp_path, name, content, match) -> None:
    (tmp_path / name).write_text(content)

    with pytest.raises(ConfigError, match=match):
        read_documents(tmp_path / name)


def test_missing_or_empty_paths_raise(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_documents(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match="holds no"):
        read_documents(tmp_path)


def test_short_documents_are_framed_and_right_padded(tokenizer) -> None:
    text = "Driver: Call Anna. Assistant: Calling Anna."
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]

    examples = encode_documents([text], tokenizer, seq_len=32)

    assert examples.input_ids.shape == examples.attention_mask.shape == (1, 32)
    assert examples.input_ids.dtype == examples.attention_mask.dtype == torch.long
    n = len(tokens) + 2
    row = examples.input_ids[0].tolist()
    assert row[:n] == [tokenizer.bos_token_id, *tokens, tokenizer.eos_token_id]
    assert row[n:] == [tokenizer.pad_token_id] * (32 - n)
    assert examples.attention_mask[0].tolist() == [1] * n + [0] * (32 - n)


def test_long_documents_are_chunked_without_loss(tokenizer) -> None:
    text = " ".join(d.text for d in generate_corpus(12, seed=4))
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    framed = [tokenizer.bos_token_id, *tokens, tokenizer.eos_token_id]
    seq_len = 16

    examples = encode_documents([text], tokenizer, seq_len=seq_len)

    kept = examples.input_ids[examples.attention_mask.bool()].tolist()
    starts = range(0, len(framed), seq_len)
    expected_rows = sum(1 for i in starts if len(framed) - i >= 2)
    assert len(examples) == expected_rows
    assert kept == framed[: len(kept)] and len(framed) - len(kept) <= 1
    assert examples.attention_mask[:-1].all()  # only the last window is padded


def test_load_examples_reads_then_encodes(tokenizer, tmp_path) -> None:
    (tmp_path / "t.txt").write_text("Driver: Hello.\nDriver: Call Ben.\n")

    examples = load_examples(tmp_path / "t.txt", tokenizer, seq_len=12)

    assert len(examples) == 2
    assert examples.input_ids[:, 0].eq(tokenizer.bos_token_id).all()


def _rows(batches) -> torch.Tensor:
    return torch.cat([b["input_ids"] for b in batches])  # (N, T)


def test_batches_cover_everything_once_and_shuffle_by_seed(tokenizer) -> None:
    examples = encode_documents([d.text for d in generate_corpus(37)], tokenizer, 64)

    plain = list(iterate_batches(examples, batch_size=8))
    shuffled = list(iterate_batches(examples, batch_size=8, shuffle=True, seed=3))
    again = list(iterate_batches(examples, batch_size=8, shuffle=True, seed=3))
    other = list(iterate_batches(examples, batch_size=8, shuffle=True, seed=4))
    dropped = list(iterate_batches(examples, batch_size=8, drop_last=True))

    sizes = [len(b["input_ids"]) for b in plain]
    full, rest = divmod(len(examples), 8)
    assert rest and sizes == [8] * full + [rest]
    assert torch.equal(_rows(plain), examples.input_ids)
    assert sorted(_rows(shuffled).tolist()) == sorted(_rows(plain).tolist())
    assert torch.equal(_rows(shuffled), _rows(again))
    assert not torch.equal(shuffled[0]["input_ids"], other[0]["input_ids"])
    assert len(dropped) == full and set(plain[0]) == {"input_ids", "attention_mask"}


def test_steps_run_across_epochs_with_a_new_order_each(tokenizer) -> None:
    examples = encode_documents([d.text for d in generate_corpus(10)], tokenizer, 64)
    per_epoch = len(examples) // 4

    steps = list(iterate_steps(examples, batch_size=4, num_steps=2 * per_epoch + 1))
    first_epoch = list(
        iterate_batches(examples, 4, shuffle=True, seed=0, drop_last=True)
    )

    assert len(steps) == 2 * per_epoch + 1
    assert all(len(b["input_ids"]) == 4 for b in steps)
    assert torch.equal(_rows(steps[:per_epoch]), _rows(first_epoch))
    assert not torch.equal(_rows(steps[per_epoch : 2 * per_epoch]), _rows(first_epoch))


def test_bad_arguments_raise(tokenizer) -> None:
    examples = encode_documents(["Driver: Hi."], tokenizer, 8)

    with pytest.raises(ConfigError, match="1"):
        encode_documents(["x"], tokenizer, seq_len=1)
    with pytest.raises(ConfigError, match="0"):
        next(iterate_batches(examples, batch_size=0))
    with pytest.raises(ConfigError, match="batch_size 2"):
        next(iterate_steps(examples, batch_size=2, num_steps=1))

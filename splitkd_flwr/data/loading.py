"""Read local text (.txt, .jsonl or a folder of them) into fixed-length batches."""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from splitkd_flwr.core.errors import ConfigError

TEXT_SUFFIXES = (".txt", ".jsonl")
_SUFFIX_NAMES = " or ".join(TEXT_SUFFIXES)

# tokens per example; built-in documents are 10-40 tokens long
DEFAULT_SEQ_LEN = 64


def _read_file(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".txt":  # one document per line
        return [line.strip() for line in lines if line.strip()]
    documents = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number} is not valid JSON: {err}") from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ConfigError(
                f'{path}:{number} needs a string "text" field, got {line!r}'
            )
        documents.append(record["text"])
    return documents


def read_documents(path: str | Path) -> list[str]:
    """Read documents from a ``.txt`` file, a ``.jsonl`` file or a folder of them.

    A ``.txt`` file holds one document per line (blank lines skipped); a ``.jsonl``
    file one JSON object per line with a string ``"text"`` field. A folder is read
    recursively, files in sorted order.

    Raises
    ------
    ConfigError
        If the path does not exist, has another suffix, holds no such files, or a
        JSON line is malformed (the message names file and line).
    """
    root = Path(path).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES)
        files = [p for p in files if p.is_file()]
        if not files:
            raise ConfigError(f"{str(root)!r} holds no {_SUFFIX_NAMES} files")
    elif root.is_file():
        if root.suffix not in TEXT_SUFFIXES:
            raise ConfigError(
                f"unsupported text file {str(root)!r}; use {_SUFFIX_NAMES}"
            )
        files = [root]
    else:
        raise ConfigError(f"text path {str(root)!r} does not exist")
    return [doc for file in files for doc in _read_file(file)]


@dataclass(frozen=True)
class Examples:
    """Fixed-length examples: token ids, right-padded, and their attention mask."""

    input_ids: Tensor  # (N, T) int64
    attention_mask: Tensor  # (N, T) int64, 1 on real tokens

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # Llama 3 tokenizers have no pad token; the mask hides whatever fills the padding.
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def encode_documents(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int = DEFAULT_SEQ_LEN,
) -> Examples:
    """Tokenize documents into examples of exactly ``seq_len`` tokens.

    Each document becomes ``bos + tokens + eos`` (for whichever of the two the
    tokenizer has), cut into consecutive ``seq_len`` windows; the last window is
    right-padded with the pad id (the eos id if there is none) and windows with fewer
    than 2 tokens, which hold no next-token target, are dropped.

    Returns
    -------
    Examples
        ``input_ids`` and ``attention_mask``, both (N, seq_len) int64.
    """
    if seq_len < 2:
        raise ConfigError(f"seq_len must be >= 2, got {seq_len}.")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pad = _pad_id(tokenizer)
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows: list[list[int]] = []
    for tokens in encoded:
        ids = bos + tokens + eos
        rows.extend(ids[i : i + seq_len] for i in range(0, len(ids), seq_len))
    rows = [row for row in rows if len(row) >= 2]
    input_ids = torch.full((len(rows), seq_len), pad, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(rows), seq_len), dtype=torch.long)  # (N, T)
    for n, row in enumerate(rows):
        input_ids[n, : len(row)] = torch.tensor(row)
        attention_mask[n, : len(row)] = 1
    return Examples(input_ids, attention_mask)


def load_examples(
    path: str | Path, tokenizer: PreTrainedTokenizerBase, seq_len: int = DEFAULT_SEQ_LEN
) -> Examples:
    """`read_documents` then `encode_documents`."""
    return encode_documents(read_documents(path), tokenizer, seq_len)


def iterate_batches(
    examples: Examples,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """Yield ``{"input_ids": (B, T), "attention_mask": (B, T)}`` mini-batches.

    With ``shuffle`` the order is a permutation drawn from ``seed`` alone (pass
    ``seed + epoch`` for a new order per epoch); the global RNG is left untouched.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(examples), generator=generator)
    else:
        order = torch.arange(len(examples))
    stop = len(examples) - batch_size + 1 if drop_last else len(examples)
    for start in range(0, max(stop, 0), batch_size):
        index = order[start : start + batch_size]
        yield {
            "input_ids": examples.input_ids[index],
            "attention_mask": examples.attention_mask[index],
        }


def iterate_steps(
    examples: Examples, batch_size: int, num_steps: int, *, seed: int = 0
) -> Iterator[dict[str, Tensor]]:
    """Yield exactly ``num_steps`` full shuffled mini-batches, epoch after epoch.

    Epoch ``e`` is shuffled with ``seed + e``; a last partial batch is skipped.
    """
    if len(examples) < batch_size:
        raise ConfigError(
            f"batch_size {batch_size} exceeds the {len(examples)} examples available."
        )
    step, epoch = 0, 0
    while True:
        for batch in iterate_batches(
            examples, batch_size, shuffle=True, seed=seed + epoch, drop_last=True
        ):
            if step == num_steps:
                return
            yield batch
            step += 1
        epoch += 1

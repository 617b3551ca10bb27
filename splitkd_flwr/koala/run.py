"""Build a KOALA run from its config: the large model, the small architectures, the proxy set."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp import Grid
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from splitkd_flwr.data.knowledge import KnowledgeSplit, knowledge_split
from splitkd_flwr.data.loading import Examples, encode_documents, iterate_batches
from splitkd_flwr.data.tokenizer import load_tokenizer, train_tokenizer
from splitkd_flwr.default_models.configs import default_teacher_config
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.device_data import PARTITION_SEED
from splitkd_flwr.flower.run import held_out_batches, run_strategy
from splitkd_flwr.koala.models import parse_shape, small_config
from splitkd_flwr.koala.sequence import SequenceKD, build_rows
from splitkd_flwr.koala.strategy import EvalFn, Koala
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.models import check_pair, load_causal_lm


def run_koala(grid: Grid, config: RunConfig) -> Path:
    """Run the KOALA rounds, save the large and small models; return the output dir."""
    return run_strategy(grid, config, build_koala)


@contextmanager
def build_koala(config: RunConfig, output_dir: Path) -> Iterator[Koala]:
    """The strategy of a KOALA run (it holds nothing that needs closing).

    The data is the knowledge split of the built-in corpus (`data/knowledge.py`): the
    proxy holds the server topics and the clients' prompts without answers; held-out is
    client-topic text unless ``eval-data`` names a file.
    """
    split = knowledge_split(1, seed=PARTITION_SEED)
    large, smalls, tokenizer = koala_models(config, split)
    # a prompt needs room for at least one answer token within seq-len
    prompts = [
        p for p in prompt_ids(split.proxy_prompts, tokenizer) if len(p) < config.seq_len
    ]
    proxy = concat_examples(
        [
            encode_documents(split.proxy_text, tokenizer, config.seq_len),
            prompt_rows(prompts, config.seq_len, tokenizer.pad_token_id or 0),
        ]
    )
    if config.eval_data == "builtin":
        examples = encode_documents(split.held_out, tokenizer, config.seq_len)
        batches = list(iterate_batches(examples, config.batch_size))
        held_out = batches[: config.eval_batches or None]
    else:
        held_out = held_out_batches(config, tokenizer)
    sequence = None
    if config.koala_prompts:
        sequence = SequenceKD(
            prompts,
            config.koala_prompts,
            config.koala_max_new_tokens,
            config.seq_len,
            config.batch_size,
            int(tokenizer.eos_token_id),
            int(tokenizer.pad_token_id or 0),
        )
    evaluate = evaluation(large, smalls, held_out)
    yield Koala(config, large, smalls, tokenizer, proxy, evaluate, sequence)


def koala_models(
    config: RunConfig, split: KnowledgeSplit
) -> tuple[PreTrainedModel, list[PreTrainedModel], PreTrainedTokenizerBase]:
    """The large model, one small model per ``student`` entry, and the tokenizer.

    ``teacher = "default"``: the default teacher's architecture, untrained (seeded by
    ``seed``), with a tokenizer trained on the server's own texts; never the trained
    default teacher, which has seen the clients' topics. A ``student`` entry is a
    directory or a shape (`koala/models.py`; ``default`` is `models.DEFAULT_SMALL`).
    """
    names = [n.strip() for n in config.student.split(",") if n.strip()] or ["default"]
    torch.manual_seed(config.seed)
    if config.teacher == "default":
        tokenizer = train_tokenizer(split.proxy_text + split.proxy_prompts)
        large = load_causal_lm(default_teacher_config(len(tokenizer)))
    else:
        # a user's large model directory holds its tokenizer (as HF checkpoints do)
        large_dir, _, tokenizer_dir = resolve_koala_models(config)
        large, tokenizer = load_causal_lm(large_dir), load_tokenizer(tokenizer_dir)
    smalls = []
    for name in names:
        shape = parse_shape(name)
        smalls.append(
            load_causal_lm(
                Path(name) if shape is None else small_config(large.config, shape)
            )
        )
    for small in smalls:
        check_pair(large, small)
    return large, smalls, tokenizer


def resolve_koala_models(config: RunConfig) -> tuple[Path, list[Path], Path]:
    """Directories of a KOALA run given by directories: the large model (``teacher``),
    one per small architecture (``student``, comma-separated), the tokenizer's."""
    names = [name.strip() for name in config.student.split(",") if name.strip()]
    return Path(config.teacher), [Path(name) for name in names], Path(config.teacher)


def prompt_ids(
    prompts: Sequence[str], tokenizer: PreTrainedTokenizerBase
) -> list[list[int]]:
    """Token ids of each prompt, bos first (no eos: the answer follows)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    return [bos + ids for ids in encoded]


def prompt_rows(ids: list[list[int]], seq_len: int, pad_id: int) -> Examples:
    """Prompts as proxy rows (bos + prompt, right-padded; no answer, no eos)."""
    return build_rows(ids, [[[] for _ in ids]], seq_len, pad_id).examples


def concat_examples(parts: Sequence[Examples]) -> Examples:
    """One `Examples` of several (same ``seq_len``)."""
    return Examples(
        torch.cat([p.input_ids for p in parts]),
        torch.cat([p.attention_mask for p in parts]),
    )


def evaluation(
    large: PreTrainedModel, smalls: Sequence[PreTrainedModel], batches: list[Any]
) -> EvalFn:
    """Held-out figures of the large model (``eval-*``) and of each small one (``small-<k>-eval-*``)."""

    def evaluate() -> dict[str, Any]:
        figures = {f"eval-{k}": v for k, v in evaluate_lm(large, batches).items()}
        for index, small in enumerate(smalls):
            figures.update(
                {
                    f"small-{index}-eval-{k}": v
                    for k, v in evaluate_lm(small, batches).items()
                }
            )
        return figures

    return evaluate

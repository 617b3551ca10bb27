"""Build a KOALA run from its config: the large model, the small architectures, the proxy set."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid
from transformers import PreTrainedModel

from splitkd_flwr.data.loading import encode_documents
from splitkd_flwr.data.partition import builtin_split
from splitkd_flwr.data.tokenizer import load_tokenizer
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.run import held_out_batches, resolve_models, run_strategy
from splitkd_flwr.koala.strategy import EvalFn, Koala
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.models import check_pair, load_causal_lm


def run_koala(grid: Grid, config: RunConfig) -> Path:
    """Run the KOALA rounds, save the large and small models; return the output dir."""
    return run_strategy(grid, config, build_koala)


@contextmanager
def build_koala(config: RunConfig, output_dir: Path) -> Iterator[Koala]:
    """The strategy of a KOALA run (it holds nothing that needs closing)."""
    large_dir, small_dirs, tokenizer_dir = resolve_koala_models(config)
    large, tokenizer = load_causal_lm(large_dir), load_tokenizer(tokenizer_dir)
    smalls = [load_causal_lm(d) for d in small_dirs]
    for small in smalls:
        check_pair(large, small)
    evaluate = evaluation(large, smalls, held_out_batches(config, tokenizer))
    # The proxy set is the corpus's server part: disjoint from held-out and device data.
    proxy = encode_documents(
        [d.text for d in builtin_split(1, seed=config.seed).server],
        tokenizer,
        config.seq_len,
    )
    yield Koala(config, large, smalls, tokenizer, proxy, evaluate)


def resolve_koala_models(config: RunConfig) -> tuple[Path, list[Path], Path]:
    """The large model's directory (``teacher``), one per small architecture (``student``,
    comma-separated), and the tokenizer's."""
    names = [name.strip() for name in config.student.split(",") if name.strip()] or [
        "default"
    ]
    large_dir, _, tokenizer_dir = resolve_models(replace(config, student=names[0]))
    return (
        large_dir,
        [resolve_models(replace(config, student=name))[1] for name in names],
        tokenizer_dir,
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

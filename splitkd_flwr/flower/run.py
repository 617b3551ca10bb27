"""The run skeleton both modes share: output folder, models, held-out data, rounds, report.

A mode supplies one thing, a :class:`~splitkd_flwr.flower.loop.RoundStrategy` built
inside a context manager (so that what it opened, a data plane or a GPU clock, is closed
whatever happens); :func:`run_strategy` does the rest the same way for every mode.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from flwr.serverapp import Grid
from transformers import PreTrainedTokenizerBase

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.loading import encode_documents, iterate_batches, load_examples
from splitkd_flwr.data.partition import builtin_split
from splitkd_flwr.default_models.prepare import prepare_default_models
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.environment import environment_record
from splitkd_flwr.flower.loop import RoundStrategy, run_rounds
from splitkd_flwr.flower.nodes import wait_for_nodes
from splitkd_flwr.flower.report import MetricsLog, plot_rounds, print_report

logger = logging.getLogger(__name__)

StrategyFactory = Callable[[RunConfig, Path], AbstractContextManager[RoundStrategy]]


def resolve_models(config: RunConfig) -> tuple[Path, Path, Path]:
    """Teacher, student and tokenizer directories; ``default`` prepares (or reuses) the built-in pair.

    A user's teacher directory holds its tokenizer (as Hugging Face checkpoints do).
    """
    if "default" not in (config.teacher, config.student):
        return Path(config.teacher), Path(config.student), Path(config.teacher)
    defaults = prepare_default_models(progress=False)
    teacher = (
        defaults.teacher_dir if config.teacher == "default" else Path(config.teacher)
    )
    student = (
        defaults.student_dir if config.student == "default" else Path(config.student)
    )
    tokenizer = defaults.tokenizer_dir if config.teacher == "default" else teacher
    return teacher, student, tokenizer


def held_out_batches(
    config: RunConfig, tokenizer: PreTrainedTokenizerBase
) -> list[dict[str, torch.Tensor]]:
    """The server's held-out mini-batches (``eval-data``), ``eval-batches`` of them (0 = all)."""
    if config.eval_data == "builtin":
        texts = [doc.text for doc in builtin_split(1, seed=config.seed).eval]
        examples = encode_documents(texts, tokenizer, config.seq_len)
    else:
        examples = load_examples(config.eval_data, tokenizer, config.seq_len)
    batches = list(iterate_batches(examples, config.batch_size))
    if not batches:
        raise ConfigError("the held-out data yields no examples")
    return batches[: config.eval_batches or None]


def output_dir_of(config: RunConfig) -> Path:
    """The run's output folder (created), with the run config saved in it."""
    output_dir = Path(config.output_dir).expanduser().resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "run-config.json").write_text(
        json.dumps(config.to_run_config(), indent=2)
    )
    return output_dir


def run_strategy(grid: Grid, config: RunConfig, build: StrategyFactory) -> Path:
    """Build the mode's strategy, run ``num-rounds`` rounds, save, report; return the folder."""
    output_dir = output_dir_of(config)
    metrics_log = MetricsLog(output_dir)
    with build(config, output_dir) as strategy:
        metrics_log.append({"round": 0, "status": "initial", **strategy.evaluate()})
        wait_for_nodes(grid, config.min_nodes, config.round_timeout_s)
        run_rounds(
            strategy, grid, config.num_rounds, config.round_timeout_s, metrics_log
        )
        summary = strategy.finish(grid, output_dir, metrics_log.records)
    summary["metrics saved to"] = str(metrics_log.jsonl_path)
    summary["environment"] = environment_record(config.threads)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_report(metrics_log.records, summary)
    plot_rounds(metrics_log.records, output_dir / "rounds.png")
    return output_dir

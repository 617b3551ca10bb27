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
from splitkd_flwr.flower.checkpoint import (
    Checkpoint,
    CheckpointStore,
    rng_state,
    set_rng_state,
)
from splitkd_flwr.flower.checkpoint_folder import refuse_a_checkpoint
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
    """Build the mode's strategy, run ``num-rounds`` rounds, save, report; return the folder.

    With ``resume`` the run continues after the newest checkpoint in ``output-dir``.
    """
    output_dir = output_dir_of(config)
    checkpoints = CheckpointStore(output_dir)
    resumed = resumable(checkpoints, config)
    metrics_log = MetricsLog(output_dir, resumed.records if resumed else None)
    with build(config, output_dir) as strategy:
        if resumed is None:
            metrics_log.append({"round": 0, "status": "initial", **strategy.evaluate()})
        else:
            strategy.load_state_dict(resumed.state["strategy"])
            set_rng_state(resumed.state["rng"])
        wait_for_nodes(grid, config.min_nodes, config.round_timeout_s)
        run_rounds(
            strategy,
            grid,
            config.num_rounds,
            config.round_timeout_s,
            metrics_log,
            first_round=resumed.server_round + 1 if resumed else 1,
            after_round=checkpointer(checkpoints, config, strategy, metrics_log),
        )
        summary = strategy.finish(grid, output_dir, metrics_log.records)
    # The result is saved: a later run in this folder starts afresh.
    checkpoints.clear()
    summary["metrics saved to"] = str(metrics_log.jsonl_path)
    summary["environment"] = environment_record(config.threads)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_report(metrics_log.records, summary)
    plot_rounds(metrics_log.records, output_dir / "rounds.png")
    return output_dir


def resumable(checkpoints: CheckpointStore, config: RunConfig) -> Checkpoint | None:
    """The checkpoint to continue from (``resume``), or None to start afresh.

    A fresh run never overwrites a checkpoint: it asks for ``resume`` or another folder.
    """
    if not config.resume:
        refuse_a_checkpoint(checkpoints.root.parent)
        return None
    latest = checkpoints.latest()
    if latest is None:
        logger.warning(
            "resume: no checkpoint in %s; starting at round 1", checkpoints.root
        )
        return None
    changed = sorted(
        key
        for key, value in config.to_run_config().items()
        if key not in ("resume", "num-rounds") and latest.run_config.get(key) != value
    )
    if changed:
        logger.warning(
            "resume: run-config keys changed since the checkpoint: %s", changed
        )
    logger.info("resume: continuing after round %d", latest.server_round)
    return latest


def checkpointer(
    checkpoints: CheckpointStore,
    config: RunConfig,
    strategy: RoundStrategy,
    metrics_log: MetricsLog,
) -> Callable[[int], None] | None:
    """Saves a checkpoint every ``checkpoint-every`` rounds (None: off or not resumable)."""
    if config.checkpoint_every == 0:
        return None

    def after_round(server_round: int) -> None:
        if server_round % config.checkpoint_every and server_round != config.num_rounds:
            return
        state = strategy.state_dict()
        if state is None:
            return
        saved = checkpoints.save(
            Checkpoint(
                server_round,
                {"strategy": state, "rng": rng_state()},
                metrics_log.records,
                config.to_run_config(),
            )
        )
        logger.info("round %d: checkpoint saved to %s", server_round, saved)

    return after_round

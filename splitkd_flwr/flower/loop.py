"""The round loop both modes share: refresh -> configure -> send -> aggregate or abort -> log.

A round is a value. ``configure_train`` opens it and returns a :class:`TrainRound` (the
messages to send and whatever the mode needs to finish the round); ``aggregate_train``
and ``abort_train`` consume that value. Nothing about an open round is left on the
strategy between calls, so a strategy can be read one method at a time.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from splitkd_flwr.core.errors import ConfigError, SplitKDError
from splitkd_flwr.flower.report import MetricsLog

logger = logging.getLogger(__name__)


@dataclass
class TrainRound:
    """One open round: its number, the messages to send, and what the record says of it."""

    server_round: int
    messages: list[Message]
    # Figures known when the round opens (device, cut, modelled cost); logged as they are.
    described: dict[str, Any] = field(default_factory=dict)


class RoundStrategy(ABC):
    """A strategy shaped like Flower's ``Strategy``, with the open round as a value.

    The loop (:func:`run_rounds`) calls, per round: ``refresh_nodes``,
    ``configure_train`` -> ``collect_replies`` -> ``aggregate_train``; if any of them
    raises a :class:`~splitkd_flwr.core.errors.SplitKDError`, ``abort_train`` undoes the
    round instead. Then ``round_figures`` and ``evaluate`` complete the round's record.
    """

    #: ``status`` of a round that raised (split KD rolls back; KOALA just has no update).
    failed_status = "failed"

    def refresh_nodes(self, grid: Grid, timeout_s: float) -> None:
        """Learn about new nodes and forget gone ones (default: nothing to learn)."""

    @abstractmethod
    def configure_train(self, server_round: int, grid: Grid) -> TrainRound:
        """Open round ``server_round``: choose nodes, build their messages."""

    def collect_replies(
        self, grid: Grid, train_round: TrainRound, timeout_s: float
    ) -> list[Message]:
        """Send the round's messages and wait for the replies (default: all, or timeout)."""
        return list(grid.send_and_receive(train_round.messages, timeout=timeout_s))

    @abstractmethod
    def aggregate_train(
        self, train_round: TrainRound, replies: list[Message]
    ) -> dict[str, Any]:
        """Close the round with the replies; return its figures for the record.

        Raises
        ------
        SplitKDError
            The round cannot be committed; the loop then calls ``abort_train``.
        """

    def abort_train(self, train_round: TrainRound | None) -> None:
        """Undo whatever the round changed (``None``: it failed while opening)."""

    def round_figures(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Extra figures of a finished round (measured energy, clocks); default none."""
        return {}

    def state_dict(self) -> dict[str, Any] | None:
        """Everything a resumed run needs (tensors and JSON values), or None if it cannot resume.

        Called between rounds, after a round's record is complete.
        """
        return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned, before the first resumed round."""
        raise ConfigError(f"{type(self).__name__} cannot resume a run (resume=true)")

    @abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """The server-side held-out figures, keyed ``eval-*`` (and mode-specific extras)."""

    @abstractmethod
    def finish(
        self, grid: Grid, output_dir: Path, records: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """After the last round: save and deploy the result; return the run's summary."""


def run_rounds(
    strategy: RoundStrategy,
    grid: Grid,
    num_rounds: int,
    timeout_s: float,
    metrics_log: MetricsLog,
    first_round: int = 1,
    after_round: Callable[[int], None] | None = None,
) -> None:
    """Run rounds ``first_round``..``num_rounds``; a failed round is logged, undone and
    the run goes on. ``after_round(n)`` runs once round n's record is written (a
    checkpoint)."""
    for server_round in range(first_round, num_rounds + 1):
        started = time.monotonic()
        record: dict[str, Any] = {"round": server_round}
        train_round: TrainRound | None = None
        try:
            strategy.refresh_nodes(grid, timeout_s)
            train_round = strategy.configure_train(server_round, grid)
            record.update(train_round.described)
            replies = strategy.collect_replies(grid, train_round, timeout_s)
            record.update(
                {"status": "ok", **strategy.aggregate_train(train_round, replies)}
            )
        except SplitKDError as err:
            strategy.abort_train(train_round)
            logger.warning(
                "round %s: %s: %s", server_round, strategy.failed_status, err
            )
            record.update({"status": strategy.failed_status, "error": str(err)})
        record["measured-round-s"] = time.monotonic() - started
        record.update(strategy.round_figures(record))
        record.update(strategy.evaluate())
        metrics_log.append(record)
        logger.info("round %s/%s: %s", server_round, num_rounds, progress_line(record))
        if after_round is not None:
            after_round(server_round)


def progress_line(record: Mapping[str, Any]) -> str:
    """One human line per round: status, who, where cut, loss, held-out perplexity."""
    parts = [f"{record.get('status')}"]
    for key, fmt in (
        ("partition-id", "vehicle %s"),
        ("cut-layer", "cut %s"),
        ("train-loss", "loss %.3f"),
        ("eval-perplexity", "eval ppl %.2f"),
    ):
        if record.get(key) is not None:
            parts.append(fmt % record[key])
    return ", ".join(parts)

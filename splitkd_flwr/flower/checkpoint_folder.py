"""Which checkpoints a run's output folder holds: folder names only (no torch).

`checkpoint` reads and writes them; this module only looks, so that `splitkd simulate`
and the ServerApp's preflight can refuse a fresh run over a resumable one before a
SuperLink, Ray or a model starts.
"""

from __future__ import annotations

from pathlib import Path

from splitkd_flwr.core.errors import ConfigError

__all__ = [
    "CHECKPOINT_DIR",
    "PARTIAL_SUFFIX",
    "complete_checkpoints",
    "newest_round",
    "refuse_a_checkpoint",
]

CHECKPOINT_DIR = "checkpoint"
# A checkpoint is written under this suffix and renamed when complete.
PARTIAL_SUFFIX = ".partial"


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete ``round-NNNN`` folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.glob("round-*")
        if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX)
    )


def newest_round(output_dir: Path) -> int | None:
    """The round of the newest complete checkpoint in a run's output folder, or None."""
    complete = complete_checkpoints(output_dir / CHECKPOINT_DIR)
    return int(complete[-1].name.removeprefix("round-")) if complete else None


def refuse_a_checkpoint(output_dir: Path) -> None:
    """Raise ConfigError if a fresh run into ``output_dir`` would start over a resumable one."""
    newest = newest_round(output_dir)
    if newest is not None:
        raise ConfigError(
            f"{output_dir / CHECKPOINT_DIR} holds a checkpoint after round {newest}: "
            "set resume=true (splitkd simulate --resume) to continue that run, or "
            "choose another output-dir"
        )

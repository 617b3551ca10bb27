"""What a run's numbers depend on besides its config: math threads and library versions.

The apps set their own thread count from the run config (``threads``), whatever process
started them (``splitkd simulate``, plain ``flwr run``, a SuperNode): torch's default is
one thread per core in every process, and a server and devices sharing a machine then
fight over its cores, run slower, and sum floats in a different order.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

# The packages whose versions can change a run's numbers (kernels, defaults, RNG use).
_PACKAGES = ("torch", "transformers", "flwr", "numpy", "peft")


def apply_threads(threads: int) -> None:
    """Set this process's torch intra-op (OpenMP) threads; 0 leaves torch's default."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def apply_run_threads(run_config: Mapping[str, Any]) -> None:
    """:func:`apply_threads` with the ``threads`` key of a Flower run config (default 1)."""
    threads = run_config.get("threads", 1)
    apply_threads(threads if isinstance(threads, int) else 1)


def quiet_libraries() -> None:
    """Turn off transformers' progress bars ("Loading weights", "Writing model shards").

    Every device process loads and saves models each round; in a run's streamed log the
    bars are dozens of lines that say nothing (the per-round line says what happened).
    """
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    hf_logging.disable_progress_bar()


def library_versions() -> dict[str, str]:
    """Versions of Python and of the packages the numbers depend on (absent ones left out)."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def environment_record(threads: int) -> dict[str, Any]:
    """The environment a run's figures came from, for ``summary.json``."""
    return {
        "threads": threads if threads > 0 else torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        **library_versions(),
    }

"""Checkpoints of a run after each round: written atomically, read without unpickling.

A checkpoint is one folder ``round-NNNN`` inside the run's ``checkpoint/`` folder:

- ``tensors.safetensors``: every tensor of the state (the student, the optimizer's
  moments and steps, torch's RNG state), by path;
- ``state.json``: everything else (the round, the optimizer's hyper-parameters, the
  strategy's bookkeeping, numpy's and Python's RNG states, the run config, the metrics
  records so far), with each tensor replaced by a reference to its path.

It is written to ``round-NNNN.partial`` and renamed when complete (a rename within a
folder is atomic), so a server killed while writing leaves the previous checkpoint
intact; the newest complete folder is the one a resumed run continues from. Loading
reads safetensors and JSON only: nothing in a checkpoint can run code.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.flower.checkpoint_folder import (
    CHECKPOINT_DIR,
    PARTIAL_SUFFIX,
    complete_checkpoints,
)

logger = logging.getLogger(__name__)

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
FORMAT = 1

# Markers of the JSON encoding; a plain dict's keys never start with "__splitkd".
_TENSOR = "__splitkd_tensor__"
_TUPLE = "__splitkd_tuple__"
_ITEMS = "__splitkd_items__"  # a dict with non-string keys (an optimizer's param ids)


def split_tensors(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-able copy of ``value`` with each tensor moved into ``tensors`` by its path.

    Handles what ``state_dict()`` of modules and optimizers hold: tensors, dicts (any
    scalar keys), lists, tuples, numbers, strings, bools, None. Anything else is an
    error: no object is ever pickled.
    """
    if isinstance(value, torch.Tensor):
        name = path or "tensor"
        if name in tensors:
            raise ConfigError(f"checkpoint: two tensors at {name!r}")
        # safetensors wants dense, unshared storage: a contiguous copy on the CPU.
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: name}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__splitkd") for k in value):
            return {
                k: split_tensors(v, tensors, f"{path}/{k}") for k, v in value.items()
            }
        return {
            _ITEMS: [
                [_scalar(k, path), split_tensors(v, tensors, f"{path}/{k}")]
                for k, v in value.items()
            ]
        }
    if isinstance(value, tuple):
        return {
            _TUPLE: [
                split_tensors(v, tensors, f"{path}/{i}") for i, v in enumerate(value)
            ]
        }
    if isinstance(value, list):
        return [split_tensors(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]
    return _scalar(value, path)


def join_tensors(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `split_tensors`: the JSON skeleton with its tensors put back."""
    if isinstance(value, dict):
        if _TENSOR in value:
            name = value[_TENSOR]
            if name not in tensors:
                raise ConfigError(f"checkpoint: tensor {name!r} is missing")
            return tensors[name]
        if _TUPLE in value:
            return tuple(join_tensors(v, tensors) for v in value[_TUPLE])
        if _ITEMS in value:
            return {k: join_tensors(v, tensors) for k, v in value[_ITEMS]}
        return {k: join_tensors(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [join_tensors(v, tensors) for v in value]
    return value


def _scalar(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ConfigError(
        f"checkpoint: {type(value).__name__} at {path or 'the top'} is neither a "
        "tensor nor a JSON value"
    )


def rng_state() -> dict[str, Any]:
    """The server process's torch, numpy and Python RNG states (torch's as a tensor)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), py_gauss],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(
        (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
    )
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))


@dataclass
class Checkpoint:
    """What a run needs to continue after ``server_round``."""

    server_round: int
    state: dict[str, Any]  # tensors included, as the strategy's state_dict gave them
    records: list[dict[str, Any]]  # the metrics of rounds 0..server_round
    run_config: dict[str, Any]


class CheckpointStore:
    """The ``checkpoint/`` folder of a run: save after a round, load the newest."""

    def __init__(self, output_dir: Path) -> None:
        self.root = output_dir / CHECKPOINT_DIR

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write ``checkpoint`` atomically, then delete the older ones."""
        tensors: dict[str, torch.Tensor] = {}
        skeleton = split_tensors(checkpoint.state, tensors, "state")
        document = {
            "format": FORMAT,
            "round": checkpoint.server_round,
            "state": skeleton,
            "records": checkpoint.records,
            "run-config": checkpoint.run_config,
        }
        final = self.root / f"round-{checkpoint.server_round:04d}"
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_file(tensors, str(partial / TENSORS_FILE))
        (partial / STATE_FILE).write_text(json.dumps(document))
        for name in (TENSORS_FILE, STATE_FILE):
            _fsync(partial / name)
        if final.exists():  # the same round saved again (a resumed run redid it)
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync(self.root)
        for old in complete_checkpoints(self.root):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, or None if there is none."""
        complete = complete_checkpoints(self.root)
        if not complete:
            return None
        folder = complete[-1]
        document = json.loads((folder / STATE_FILE).read_text())
        if document.get("format") != FORMAT:
            raise ConfigError(
                f"{folder}: checkpoint format {document.get('format')!r}, this "
                f"version reads {FORMAT}"
            )
        tensors = load_file(str(folder / TENSORS_FILE))
        return Checkpoint(
            server_round=int(document["round"]),
            state=join_tensors(document["state"], tensors),
            records=document["records"],
            run_config=document["run-config"],
        )

    def clear(self) -> None:
        """Remove every checkpoint (the run finished and saved its result)."""
        shutil.rmtree(self.root, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or folder) to disk, so the rename lands after its data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

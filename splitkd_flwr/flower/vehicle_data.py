"""A user's text for simulated vehicles (run-config ``vehicle-data``), partitioned by the run.

Flower's simulation gives SuperNodes no node config of their own, so a simulation's
vehicles take their text from the run config instead:

- a directory with one file (``.txt``, ``.jsonl``) or sub-directory per vehicle: vehicle
  ``i`` reads the ``i``-th entry in name order (``vehicle-partitioner = "by-entry"``);
- one corpus (a ``.txt``, ``.jsonl`` or ``.parquet`` file, or a directory written by
  Hugging Face ``datasets``' ``save_to_disk``) split by a Flower Datasets partitioner:
  ``iid`` (shuffled, equal shares), ``dirichlet`` (label skew over the column
  ``vehicle-partition-by`` with concentration ``vehicle-dirichlet-alpha``) or ``column``
  (one vehicle per value of ``vehicle-partition-by``: the data's natural split).

Each document is the ``text`` column (or a ``.txt`` line). A partition is the same on every
vehicle and in every round: it depends only on the data, the partitioner and ``seed``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitkd_flwr.core.constants import VEHICLE_PARTITIONERS as PARTITIONERS
from splitkd_flwr.core.errors import ConfigError

TEXT_COLUMN = "text"
# What one corpus may be besides a `save_to_disk` directory.
_CORPUS_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class VehicleData:
    """Where simulated vehicles' text comes from and how the run splits it."""

    path: str
    partitioner: str = "auto"
    partition_by: str = ""
    dirichlet_alpha: float = 0.5
    seed: int = 0

    @classmethod
    def from_run_config(cls, run_config: Any) -> VehicleData | None:
        """The run config's ``vehicle-*`` keys (None when ``vehicle-data`` is empty)."""
        path = str(run_config.get("vehicle-data", "") or "")
        if not path:
            return None
        return cls(
            path=path,
            partitioner=str(run_config.get("vehicle-partitioner", "auto")),
            partition_by=str(run_config.get("vehicle-partition-by", "")),
            dirichlet_alpha=float(run_config.get("vehicle-dirichlet-alpha", 0.5)),
            seed=int(run_config.get("seed", 0)),
        )

    def check(self) -> None:
        """Raise ConfigError naming the key if the data or the partitioner cannot work."""
        path = Path(self.path).expanduser()
        if not path.exists():
            raise ConfigError(f"vehicle-data: {self.path!r} does not exist")
        if self.partitioner not in PARTITIONERS:
            raise ConfigError(
                f"vehicle-partitioner must be one of {PARTITIONERS}, got {self.partitioner!r}"
            )
        kind = self.resolved_partitioner()
        if kind in ("dirichlet", "column") and not self.partition_by:
            raise ConfigError(
                f"vehicle-partitioner = {kind!r} needs vehicle-partition-by (a column)"
            )
        if kind == "by-entry" and not path.is_dir():
            raise ConfigError(
                f"vehicle-partitioner = 'by-entry' needs a directory, got {self.path!r}"
            )
        if (
            kind != "by-entry"
            and path.is_file()
            and path.suffix not in _CORPUS_SUFFIXES
        ):
            raise ConfigError(
                f"vehicle-data: {self.path!r} is not {', '.join(_CORPUS_SUFFIXES)} "
                "or a datasets directory"
            )
        if not self.dirichlet_alpha > 0:
            raise ConfigError(
                f"vehicle-dirichlet-alpha must be > 0, got {self.dirichlet_alpha}"
            )

    def resolved_partitioner(self) -> str:
        """``auto``: a plain directory is one entry per vehicle; anything else is split IID."""
        if self.partitioner != "auto":
            return self.partitioner
        path = Path(self.path).expanduser()
        return "by-entry" if path.is_dir() and not _is_saved_dataset(path) else "iid"

    def check_partitions(self, num_partitions: int) -> None:
        """Raise ConfigError unless each of ``num_partitions`` vehicles gets some text.

        Reads and splits the data (seconds): `splitkd simulate` calls it before starting
        anything, because it knows the number of vehicles; the ServerApp does not.
        """
        for partition_id in range(num_partitions):
            if not self.texts(partition_id, num_partitions):
                raise ConfigError(
                    f"vehicle-data: vehicle {partition_id} of {num_partitions} gets no text "
                    f"from {self.path!r} ({self.resolved_partitioner()} split)"
                )

    def texts(self, partition_id: int, num_partitions: int) -> list[str]:
        """The documents of vehicle ``partition_id`` of ``num_partitions``."""
        return list(_partition_texts(self, partition_id, num_partitions))


@functools.lru_cache(maxsize=64)
def _partition_texts(
    spec: VehicleData, partition_id: int, num_partitions: int
) -> tuple[str, ...]:
    # Cached: a device reads its partition every round, and partitioning is deterministic.
    kind = spec.resolved_partitioner()
    path = Path(spec.path).expanduser()
    if kind == "by-entry":
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        if len(entries) < num_partitions:
            raise ConfigError(
                f"vehicle-data: {spec.path!r} has {len(entries)} entries for "
                f"{num_partitions} vehicles (one file or sub-directory each)"
            )
        return tuple(_read_documents(entries[partition_id]))
    dataset = _load_corpus(path, spec.seed if kind == "iid" else None)
    if kind != "iid" and spec.partition_by not in dataset.column_names:
        raise ConfigError(
            f"vehicle-partition-by: {spec.path!r} has no column {spec.partition_by!r} "
            f"(columns: {dataset.column_names})"
        )
    partition = _partitioner(spec, num_partitions, kind)
    partition.dataset = dataset
    try:
        if partition.num_partitions < num_partitions:
            raise ConfigError(
                f"vehicle-partition-by: {spec.partition_by!r} has "
                f"{partition.num_partitions} values for {num_partitions} vehicles"
            )
        texts = partition.load_partition(partition_id)[TEXT_COLUMN]
    except ValueError as err:
        raise ConfigError(
            f"vehicle-data: cannot partition {spec.path!r}: {err}"
        ) from err
    return tuple(str(t) for t in texts if t and str(t).strip())


def _partitioner(spec: VehicleData, num_partitions: int, kind: str) -> Any:
    # flwr-datasets: imported here, only by runs that use a user's corpus.
    from flwr_datasets.partitioner import (  # noqa: PLC0415
        DirichletPartitioner,
        IidPartitioner,
        NaturalIdPartitioner,
    )

    if kind == "iid":
        return IidPartitioner(num_partitions)
    if kind == "dirichlet":
        return DirichletPartitioner(
            num_partitions,
            partition_by=spec.partition_by,
            alpha=spec.dirichlet_alpha,
            # Text corpora are small next to image sets: any non-empty share will do.
            min_partition_size=1,
            self_balancing=False,
            shuffle=True,
            seed=spec.seed,
        )
    return NaturalIdPartitioner(partition_by=spec.partition_by)


def _load_corpus(path: Path, shuffle_seed: int | None) -> Any:
    """One corpus as a ``datasets.Dataset`` with a ``text`` column (shuffled for IID)."""
    import datasets  # noqa: PLC0415

    if path.is_dir() and _is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            split = "train" if "train" in loaded else sorted(loaded)[0]
            loaded = loaded[split]
        dataset = loaded
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415

        dataset = datasets.Dataset.from_dict(pq.read_table(path).to_pydict())
    elif path.suffix == ".jsonl":
        rows = [
            json.loads(line) for line in path.read_text().splitlines() if line.strip()
        ]
        dataset = datasets.Dataset.from_list(rows)
    else:
        dataset = datasets.Dataset.from_dict({TEXT_COLUMN: _read_documents(path)})
    if TEXT_COLUMN not in dataset.column_names:
        raise ConfigError(
            f"vehicle-data: {str(path)!r} has no {TEXT_COLUMN!r} column "
            f"(columns: {dataset.column_names})"
        )
    return dataset if shuffle_seed is None else dataset.shuffle(seed=shuffle_seed)


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _read_documents(path: Path) -> list[str]:
    # data.loading imports torch and transformers: not for the run check in `splitkd simulate`.
    from splitkd_flwr.data.loading import read_documents  # noqa: PLC0415

    return read_documents(path)

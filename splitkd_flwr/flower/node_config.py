"""What a device (SuperNode) says about itself: `--node-config` keys, checked once."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitkd_flwr.core.constants import DEVICE_SPEC_PATTERN
from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.default_models.prepare import default_cache_dir
from splitkd_flwr.flower.vehicle_data import VehicleData
from splitkd_flwr.simulation.devices import DEFAULT_DEVICES


@dataclass(frozen=True)
class NodeConfig:
    """A device's identity and local resources.

    In simulation Flower fills ``partition-id`` and ``num-partitions``; in deployment they
    come from ``flower-supernode --node-config "partition-id=0 num-partitions=2 ..."``.
    """

    partition_id: int
    num_partitions: int
    device: str  # device-profile name (Table II), used by the planner's cost model
    data_path: str  # "" = the built-in corpus partition `partition-id`
    cache_dir: Path  # provisioned assets and the deployed student live here
    energy_meter: str  # "auto", "nvml", "jetson" or "none"
    # For `energy-aware` selection (node key `energy-budget-j`); None: unlimited
    energy_budget_j: float | None = None
    # A user's text from the run config (simulation), used when data_path is empty
    vehicle_data: VehicleData | None = None
    torch_device: str = "auto"  # where the device part runs: auto|cpu|cuda|cuda:N|mps

    @classmethod
    def from_node_config(
        cls, node_config: Mapping[str, Any], run_config: Mapping[str, Any] | None = None
    ) -> NodeConfig:
        """Parse Flower's ``context.node_config`` (and ``vehicle-data`` of its run config)."""
        try:
            partition_id = int(node_config.get("partition-id", 0))
            num_partitions = int(node_config.get("num-partitions", 1))
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"partition-id / num-partitions must be integers: {err}"
            ) from err
        if not 0 <= partition_id < num_partitions:
            raise ConfigError(
                f"partition-id must be in [0, num-partitions={num_partitions}), got {partition_id}"
            )
        cache_dir = (
            Path(str(node_config.get("cache-dir", "")))
            if node_config.get("cache-dir")
            else (default_cache_dir() / "nodes" / f"partition-{partition_id}")
        )
        device = str(node_config.get("device", "")) or default_device(partition_id)
        meter = str(node_config.get("energy-meter", "auto"))
        if meter not in ("auto", "nvml", "jetson", "none"):
            raise ConfigError(
                f"energy-meter must be auto, nvml, jetson or none, got {meter!r}"
            )
        budget = node_config.get("energy-budget-j", 0)
        if (
            isinstance(budget, bool)
            or not isinstance(budget, (int, float))
            or budget < 0
        ):
            raise ConfigError(
                f"energy-budget-j must be a number >= 0 (0: unlimited), got {budget!r}"
            )
        torch_device = str(node_config.get("torch-device", "auto"))
        if not re.match(DEVICE_SPEC_PATTERN, torch_device):
            raise ConfigError(
                f"torch-device must be auto, cpu, cuda, cuda:N or mps, got {torch_device!r}"
            )
        return cls(
            partition_id=partition_id,
            num_partitions=num_partitions,
            device=device,
            data_path=str(node_config.get("data-path", "")),
            cache_dir=cache_dir,
            energy_meter=meter,
            energy_budget_j=float(budget) if budget > 0 else None,
            vehicle_data=VehicleData.from_run_config(run_config or {}),
            torch_device=torch_device,
        )


def default_device(partition_id: int) -> str:
    """The paper's Table II fleet: vehicle ``partition-id + 1`` of the ten, wrapping around."""
    return DEFAULT_DEVICES[partition_id % len(DEFAULT_DEVICES)]

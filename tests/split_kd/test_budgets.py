"""Device energy budgets reach `energy-aware`: from the fleet file, or a node's config."""

from pathlib import Path

import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.node_config import NodeConfig
from splitkd_flwr.split_kd.workspace import Workspace
from tests.apps.tiny import save_tiny_pair


def test_fleet_budgets_fill_device_states_unless_the_node_gave_one(
    tmp_path: Path,
) -> None:
    # Prepare
    teacher_dir, student_dir = save_tiny_pair(tmp_path / "models", student_layers=4)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        'devices = ["agx-orin-1.3", "orin-nx-0.91"]\nenergy_budgets_j = [300.0, 0]\n'
    )
    config = RunConfig(
        teacher=str(teacher_dir),
        student=str(student_dir),
        scenario_fleet=str(fleet),
        selector="energy-aware",
    )
    link_fn = Workspace.load(config).link_fn()
    plain = [DeviceState(10 + i, i, "agx-orin-1.3") for i in range(2)]
    own = DeviceState(12, 0, "agx-orin-1.3", energy_budget_j=50.0)

    # Execute
    linked = [link_fn(d, 1) for d in (*plain, own)]

    # Assert
    assert [d.energy_budget_j for d in linked] == [300.0, None, 50.0]


def test_node_config_energy_budget() -> None:
    assert NodeConfig.from_node_config({}).energy_budget_j is None
    node = NodeConfig.from_node_config({"energy-budget-j": 1200})
    assert node.energy_budget_j == 1200.0
    with pytest.raises(ConfigError, match="energy-budget-j"):
        NodeConfig.from_node_config({"energy-budget-j": "lots"})

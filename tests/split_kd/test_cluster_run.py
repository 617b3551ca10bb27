"""Which strategy a run builds: cluster-size 1 is today's sequential code path, untouched."""

from pathlib import Path

import pytest
import torch

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.flower.checkpoint import Checkpoint, CheckpointStore
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.simulation.cluster_planning import BySpeed, ClusterPlanner, InOrder
from splitkd_flwr.split.cluster import ClusterServer
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split_kd.cluster import ClusterSplitKD
from splitkd_flwr.split_kd.run import build_split_kd
from splitkd_flwr.split_kd.strategy import SplitKD
from tests.apps.tiny import save_tiny_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, str]:
    teacher, student = save_tiny_pair(tmp_path_factory.mktemp("models"))
    return {"teacher": str(teacher), "student": str(student), "eval_batches": 1}


def test_cluster_size_one_builds_the_sequential_strategy(pair, tmp_path: Path) -> None:
    with build_split_kd(RunConfig(**pair), tmp_path) as strategy:
        assert type(strategy) is SplitKD and type(strategy.server) is SplitServer
        assert strategy.data_plane.server._max_workers == 4


def test_cluster_size_three_builds_the_cluster_strategy(pair, tmp_path: Path) -> None:
    with build_split_kd(RunConfig(**pair, cluster_size=3), tmp_path) as strategy:
        assert isinstance(strategy, ClusterSplitKD)
        assert isinstance(strategy.server, ClusterServer)
        assert isinstance(strategy.cluster_selector, BySpeed)
        assert strategy.cluster_selector.cluster_size == 3
        assert isinstance(strategy.cluster_planner, ClusterPlanner)
        assert strategy.cluster_planner.method == "energy-optimal"
    config = RunConfig(
        **pair,
        cluster_size=2,
        cluster_selector="in-order",
        planner="fixed",
        cut_layer=2,
        scenario="none",
    )
    with build_split_kd(config, tmp_path) as strategy:
        assert isinstance(strategy.cluster_selector, InOrder)
        assert strategy.cluster_planner is None


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"planner": "mypkg.mod:Mine"}, "planner must be one of"),
        ({"scenario": "none"}, "needs the modelled world"),
        ({"cluster_selector": "fastest"}, "unknown ClusterSelector"),
        ({"cluster_size": 0}, "cluster-size"),
    ],
)
def test_bad_cluster_configs_fail_early(pair, tmp_path, overrides, match) -> None:
    with pytest.raises(ConfigError, match=match):
        config = RunConfig(**{**pair, "cluster_size": 3, **overrides})
        with build_split_kd(config, tmp_path):
            pass


def test_the_cluster_strategy_checkpoints_and_restores_its_state(
    pair, tmp_path: Path
) -> None:
    # Prepare: a student and an optimizer state that differ from a fresh build's.
    config = RunConfig(**pair, cluster_size=3)
    with build_split_kd(config, tmp_path) as strategy:
        weight = next(strategy.server.student.parameters())
        with torch.no_grad():
            weight.add_(1.0)
        weight.grad = torch.ones_like(weight)
        strategy.server.optimizer.step()
        store = CheckpointStore(tmp_path)
        store.save(Checkpoint(1, strategy.state_dict(), [], {}))
        saved = {k: v.clone() for k, v in strategy.server.student.state_dict().items()}

    # Execute
    with build_split_kd(config, tmp_path) as strategy:
        strategy.load_state_dict(store.latest().state)

        # Assert
        for name, tensor in strategy.server.student.state_dict().items():
            assert torch.equal(tensor, saved[name]), name
        assert len(strategy.server.optimizer.state) == 1

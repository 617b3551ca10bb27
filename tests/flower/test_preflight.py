"""The run check before anything starts, and the README's plug-in examples exactly as printed."""

import re
import sys
from pathlib import Path

import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState, Workload
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.preflight import check_run
from splitkd_flwr.simulation.planning import Plan, load_planner
from splitkd_flwr.simulation.selection import load_selector
from tests.apps.tiny import save_tiny_pair, tiny_llama

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = Workload(
    num_student_layers=16, batch_size=8, seq_len=64, batches_per_round=4
)


def _readme_plugins() -> tuple[str, str, str]:
    """The README's plug-in module (its path comment first) and the two specs it runs."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Plug in your own selector or planner", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    selector = re.search(r"selector='([^']+)'", command).group(1)
    planner = re.search(r"planner='([^']+)'", command).group(1)
    return code, selector, planner


@pytest.fixture
def plugin_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The README's example module written where its first line says, outside splitkd_flwr."""
    code, selector, planner = _readme_plugins()
    relative = re.match(r"# (\S+\.py)\n", code).group(1)
    (tmp_path / relative).parent.mkdir(parents=True)
    (tmp_path / relative).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    package = relative.split("/")[0]
    yield selector, planner
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def test_readme_plugins_load_and_decide_as_the_run_builds_them(plugin_package) -> None:
    # Prepare
    selector_spec, planner_spec = plugin_package
    devices = [
        DeviceState(
            node_id=7, partition_id=0, profile_name="agx-orin-1.3", uplink_bps=2e6
        ),
        DeviceState(
            node_id=8, partition_id=1, profile_name="orin-nx-0.91", uplink_bps=9e6
        ),
    ]

    # Execute: the arguments split_kd/run.py passes, the extra `fleet` option included
    check_run(RunConfig(selector=selector_spec, planner=planner_spec))
    selector = load_selector(selector_spec, seed=0)
    planner = load_planner(
        planner_spec, WORKLOAD, cut_layer=4, delay_bound_s=None, fleet=None
    )
    chosen = selector.select(devices, server_round=1)
    plan = planner.plan(chosen, server_round=1)

    # Assert
    assert chosen.node_id == 8  # the freshest link
    assert plan == Plan(cut_layer=8)  # half of the 16 student blocks


def test_a_missing_plugin_names_the_key_and_how_to_make_it_importable() -> None:
    with pytest.raises(ConfigError, match="no_such_pkg.*PYTHONPATH"):
        check_run(RunConfig(planner="no_such_pkg.mod:Planner"))


def test_builtin_planners_still_get_their_fleet() -> None:
    planner = load_planner("energy-optimal", WORKLOAD, fleet=None)
    assert planner.fleet is not None


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"planner": "fixed", "cut-layer": 16}, "cut-layer must be in 1..15"),
        ({"eval-data": "/no/such/file.txt"}, "eval-data"),
        ({"scenario-fleet": "/no/such/fleet.toml"}, "scenario-fleet"),
        ({"student": "/no/such/student"}, "student"),
        ({"device-private-layers": 15}, "device-private-layers must be at most 14"),
    ],
)
def test_check_run_names_the_bad_key(values: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        check_run(RunConfig.from_run_config(values))


def test_a_default_cut_the_planner_ignores_is_not_an_error() -> None:
    # energy-optimal plans its own cut; only a cut-layer the user set is checked
    config = RunConfig.from_run_config({"cut-layer": 16})
    check_run(config)
    with pytest.raises(ConfigError, match="cut-layer"):
        check_run(config, explicit={"cut-layer"})


def test_koala_students_are_each_checked_against_the_teacher(tmp_path: Path) -> None:
    # Prepare: a real pair, and a second small model with another vocabulary
    teacher_dir, student_dir = save_tiny_pair(tmp_path, student_layers=2)
    other = tmp_path / "other-vocab"
    tiny_llama(vocab_size=123, hidden=16, layers=2).save_pretrained(other)
    values = {"mode": "koala", "teacher": str(teacher_dir)}

    # Execute / Assert
    check_run(RunConfig.from_run_config({**values, "student": f"{student_dir}"}))
    with pytest.raises(ConfigError, match="123"):
        check_run(
            RunConfig.from_run_config({**values, "student": f"{student_dir},{other}"})
        )


def test_a_plugin_planner_with_the_default_cut_and_a_shallow_student(
    tmp_path: Path, plugin_package
) -> None:
    # The default cut-layer (4) does not fit a 4-block student, but only `fixed` uses it.
    _, planner_spec = plugin_package
    teacher_dir, student_dir = save_tiny_pair(tmp_path / "m", student_layers=4)
    check_run(
        RunConfig(
            teacher=str(teacher_dir), student=str(student_dir), planner=planner_spec
        )
    )


def test_a_clustered_run_checks_its_cluster_selector() -> None:
    check_run(RunConfig(cluster_size=3, cluster_selector="in-order"))
    with pytest.raises(ConfigError, match="no_such_pkg"):
        check_run(RunConfig(cluster_size=3, cluster_selector="no_such_pkg.m:C"))

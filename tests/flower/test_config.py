"""The run config: one source of keys (pyproject), one table (README), checked once."""

import tomllib
from pathlib import Path

import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.flower.config import RunConfig, config_keys, config_table

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_lists_every_key_with_the_dataclass_default() -> None:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    assert list(table) == config_keys()
    assert RunConfig.from_run_config(table) == RunConfig()


def test_readme_table_is_the_generated_one() -> None:
    assert config_table() in (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("num-rounds", 0, "num-rounds must be >= 1"),
        ("kd-alpha", 1.5, "kd-alpha must be in [0, 1]"),
        ("kd-divergence", "l2", "kd-divergence must be one of"),
        ("wire-dtype", "int4", "wire-dtype must be one of"),
        ("data-plane-bind", "localhost", "data-plane-bind must be 'host:port'"),
        ("batch-size", "8", "batch-size must be a int"),
        ("batch-size", 8.0, "batch-size must be a int"),
        ("nmu-rounds", 3, "unknown run-config key 'nmu-rounds'"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, words: str) -> None:
    with pytest.raises(
        ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")
    ):
        RunConfig.from_run_config({key: value})


def test_ints_are_accepted_for_floats() -> None:
    assert RunConfig.from_run_config({"device-lr": 1}).device_lr == 1.0


@pytest.mark.parametrize(
    ("pair", "words"),
    [
        ({"cluster-size": 3}, "cluster-size must be 1 with split-mode u-shape"),
        ({"lora-rank": 4}, "lora-rank must be 0 with split-mode u-shape"),
    ],
)
def test_u_shape_refuses_what_it_cannot_run(pair: dict, words: str) -> None:
    RunConfig.from_run_config(pair)  # fine in seed mode
    with pytest.raises(ConfigError, match=words):
        RunConfig.from_run_config({"split-mode": "u-shape", **pair})

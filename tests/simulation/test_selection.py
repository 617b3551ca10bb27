"""Tests of the device selectors and of loading one by name or dotted path."""

from collections.abc import Sequence

import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState
from splitkd_flwr.simulation.selection import (
    BestChannel,
    EnergyAware,
    Random,
    RoundRobin,
    Selector,
    load_selector,
)


def _devices(**per_device: list) -> list[DeviceState]:
    n = len(next(iter(per_device.values()))) if per_device else 4
    return [
        DeviceState(
            100 + i, i, "agx-orin-1.3", **{k: v[i] for k, v in per_device.items()}
        )
        for i in range(n)
    ]


def test_round_robin_cycles_by_partition_id() -> None:
    devices = list(reversed(_devices()))
    picks = [RoundRobin().select(devices, r).partition_id for r in range(1, 10)]
    assert picks == [0, 1, 2, 3, 0, 1, 2, 3, 0]


def test_random_is_seeded_per_round_and_covers_devices() -> None:
    devices = _devices()
    picks = [Random(seed=5).select(devices, r).partition_id for r in range(1, 200)]
    again = [
        Random(seed=5).select(list(reversed(devices)), r).partition_id
        for r in range(1, 200)
    ]
    other = [Random(seed=6).select(devices, r).partition_id for r in range(1, 200)]
    assert picks == again and picks != other
    assert set(picks) == {0, 1, 2, 3}


def test_best_channel_takes_the_highest_uplink() -> None:
    devices = _devices(uplink_bps=[1e8, None, 9e8, 3e8])
    assert BestChannel().select(devices, 1).partition_id == 2
    tied = _devices(uplink_bps=[5e8, 5e8, 1e8], rounds_trained=[3, 1, 0])
    assert BestChannel().select(tied, 1).partition_id == 1


def test_energy_aware_takes_the_most_budget_left() -> None:
    devices = _devices(
        energy_used_j=[500.0, 100.0, 900.0, 0.0],
        energy_budget_j=[1000.0, 1000.0, 1000.0, 100.0],
    )
    # left: 0.5, 0.9, 0.1, 1.0 -> device 3
    assert EnergyAware().select(devices, 1).partition_id == 3
    unlimited = _devices(
        energy_used_j=[5.0, 1.0, 2.0],
        energy_budget_j=[None, None, None],
        rounds_trained=[1, 1, 0],
    )
    assert EnergyAware().select(unlimited, 1).partition_id == 2  # fewest rounds first


def test_energy_aware_warns_when_every_budget_is_spent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    devices = _devices(energy_used_j=[20.0, 11.0], energy_budget_j=[10.0, 10.0])
    assert EnergyAware().select(devices, 4).partition_id == 1
    assert any("energy budget" in r.getMessage() for r in caplog.records)


class LowestIdSelector(Selector):
    """A custom selector loaded by dotted path in the test below."""

    def select(self, devices: Sequence[DeviceState], server_round: int) -> DeviceState:
        return min(devices, key=lambda d: d.node_id)


def test_load_by_name_and_dotted_path() -> None:
    for name, cls in [
        ("round-robin", RoundRobin),
        ("random", Random),
        ("best-channel", BestChannel),
        ("energy-aware", EnergyAware),
    ]:
        assert isinstance(load_selector(name, seed=1), cls)
    custom = load_selector(f"{__name__}:LowestIdSelector", seed=3)
    assert isinstance(custom, LowestIdSelector) and custom.seed == 3
    assert custom.select(_devices(), 1).node_id == 100
    with pytest.raises(ConfigError):
        load_selector("no-such-selector")
    with pytest.raises(ConfigError):
        load_selector("splitkd_flwr.core.types:Workload")  # not a Selector


def test_energy_aware_skips_a_spent_device_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: device 0 has trained least but spent its budget
    devices = _devices(
        energy_used_j=[150.0, 10.0, 20.0],
        energy_budget_j=[100.0, 1000.0, None],
        rounds_trained=[0, 2, 2],
    )
    selector = EnergyAware()

    # Execute
    with caplog.at_level("INFO"):
        picks = [selector.select(devices, r).partition_id for r in (1, 2, 3)]

    # Assert: never the spent device; said once, not once per round
    assert 0 not in picks
    spent = [r for r in caplog.records if "spent its energy budget" in r.getMessage()]
    assert len(spent) == 1 and "node 100" in spent[0].getMessage()

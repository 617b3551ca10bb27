"""Tests of the device profiles (paper Table II) and fleets loaded from TOML."""

from pathlib import Path

import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.simulation.devices import DEFAULT_PROFILES, Fleet, load_fleet


def test_default_fleet_is_table_ii() -> None:
    fleet = load_fleet()
    assert (
        fleet.server_profile.clock_hz == 2.52e9 and fleet.server_profile.cores == 16384
    )
    table = [
        (1.3e9, 2048),
        (1.3e9, 2048),
        (1.0e9, 2048),
        (1.0e9, 2048),
        (0.91e9, 1024),
        (0.91e9, 1024),
        (0.76e9, 1024),
        (0.76e9, 1024),
        (1.2e9, 512),
        (1.2e9, 512),
    ]
    assert [
        (fleet.profile_of(i).clock_hz, fleet.profile_of(i).cores) for i in range(10)
    ] == table
    # kappa calibration: the RTX 4090 draws its rated 450 W at 2.52 GHz
    rtx = DEFAULT_PROFILES["rtx4090"]
    assert rtx.kappa * rtx.clock_hz**3 == pytest.approx(450, rel=0.01)
    assert rtx.peak_flops / 1e12 == pytest.approx(82.6, abs=0.1)
    for profile in DEFAULT_PROFILES.values():
        assert profile.clock_steps_hz[-1] == profile.clock_hz
        assert list(profile.clock_steps_hz) == sorted(profile.clock_steps_hz)


def test_fleet_from_toml_extends_and_overrides(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "fleet.toml"
    path.write_text(
        'devices = ["orin-8w", "my-board"]\n'
        '[profiles.orin-8w]\nextends = "orin-nx-0.76"\nstatic_power_w = 2.5\n'
        '[profiles.my-board]\nhardware = "My board"\nclock_hz = 1.1e9\ncores = 768\n'
        "kappa = 2e-26\nstatic_power_w = 3.0\ntx_power_w = 0.1\nclock_steps_hz = [5e8, 1.1e9]\n"
    )
    # Execute
    fleet = load_fleet(path)
    # Assert
    assert (
        fleet.profile_of(0).cores == 1024 and fleet.profile_of(0).static_power_w == 2.5
    )
    assert fleet.profile_of(1).clock_steps_hz == (5e8, 1.1e9)
    assert fleet.profile_of(3).name == "my-board"  # partition ids wrap around the list
    assert fleet.server == "rtx4090"


@pytest.mark.parametrize(
    "text",
    [
        'devices = ["nope"]\n',
        '[profiles.x]\nhardware = "x"\n',  # missing keys
        '[profiles.x]\nextends = "rtx4090"\ncolour = 3\n',  # unknown key
        '[profiles.x]\nextends = "rtx4090"\nutilisation = 1.5\n',
        'servers = "rtx4090"\n',
    ],
)
def test_bad_fleet_files_name_the_problem(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_fleet(path)


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="agx-orin-1.3"):
        Fleet().profile("tpu")


def test_fleet_energy_budgets_per_device_or_for_all(tmp_path: Path) -> None:
    # Prepare
    per_device = tmp_path / "per-device.toml"
    per_device.write_text(
        'devices = ["agx-orin-1.3", "orin-nx-0.91"]\nenergy_budgets_j = [500.0, 0]\n'
    )
    for_all = tmp_path / "for-all.toml"
    for_all.write_text("energy_budgets_j = 800\n")

    # Execute
    fleet, shared = load_fleet(per_device), load_fleet(for_all)

    # Assert: 0 = unlimited; ids wrap around like profiles
    assert [fleet.energy_budget_of(i) for i in range(3)] == [500.0, None, 500.0]
    assert {shared.energy_budget_of(i) for i in range(10)} == {800.0}
    assert load_fleet(None).energy_budget_of(0) is None


def test_fleet_energy_budgets_must_match_the_devices(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('devices = ["agx-orin-1.3"]\nenergy_budgets_j = [1.0, 2.0]\n')
    with pytest.raises(ConfigError, match="energy_budgets_j"):
        load_fleet(bad)

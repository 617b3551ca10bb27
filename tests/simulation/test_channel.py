"""Tests of the TR 38.901 channel: path loss, LOS probability, shadowing, SNR and link rates."""

import math

import numpy as np
import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.simulation.channel import (
    LinkConfig,
    correlated_gaussian,
    link_trace,
    los_probability,
    path_loss_db,
)


@pytest.mark.parametrize(
    ("d_m", "expected_db"), [(50, 97.2), (100, 103.4), (200, 109.7), (500, 118.0)]
)
def test_umi_los_path_loss_at_28_ghz(d_m: float, expected_db: float) -> None:
    assert path_loss_db(d_m, True, "umi", 28e9) == pytest.approx(expected_db, abs=0.1)


def test_nlos_is_never_below_los_and_grows_with_distance() -> None:
    d = np.array([20.0, 50.0, 100.0, 300.0])
    for env in ("umi", "uma"):
        los, nlos = path_loss_db(d, True, env), path_loss_db(d, False, env)
        assert np.all(nlos >= los) and np.all(np.diff(nlos) > 0)
    # UMi NLOS by hand at 100 m (d3D with h_BS 10 m, h_UT 1.5 m)
    d3d = math.hypot(100, 8.5)
    assert path_loss_db(100.0, False, "umi") == pytest.approx(
        35.3 * math.log10(d3d) + 22.4 + 21.3 * math.log10(28)
    )


def test_umi_los_beyond_the_breakpoint_uses_the_second_formula() -> None:
    # breakpoint 4 * 9 * 0.5 * fc / c ~ 1681 m at 28 GHz: PL2 grows 40 log10(d) beyond it
    far = path_loss_db(np.array([4000.0, 8000.0]), True, "umi")
    assert far[1] - far[0] == pytest.approx(40 * math.log10(2), abs=0.05)


def test_los_probability() -> None:
    assert los_probability(10.0) == 1.0 and los_probability(18.0) == 1.0
    d = 100.0
    assert los_probability(d, "umi") == pytest.approx(
        18 / d + math.exp(-d / 36) * (1 - 18 / d)
    )
    assert los_probability(d, "uma") == pytest.approx(
        18 / d + math.exp(-d / 63) * (1 - 18 / d)
    )
    assert np.all(np.diff(los_probability(np.linspace(20, 500, 50))) < 0)


def test_shadowing_is_unit_variance_with_the_ar1_correlation() -> None:
    # Prepare: 2000 vehicles, steps of 5 m, correlation distance 10 m -> R = exp(-0.5)
    rng = np.random.default_rng(1)
    step = np.full((2000, 3), 5.0)
    # Execute
    z = correlated_gaussian(step, 10.0, rng)
    # Assert
    assert z.std() == pytest.approx(1.0, abs=0.05)
    assert np.corrcoef(z[:, 0], z[:, 1])[0, 1] == pytest.approx(
        math.exp(-0.5), abs=0.05
    )
    assert np.corrcoef(z[:, 0], z[:, 2])[0, 1] == pytest.approx(
        math.exp(-1.0), abs=0.05
    )


def test_snr_matches_the_link_budget_example() -> None:
    # Prepare: a vehicle at 50 m in a LOS draw (P_LOS ~ 0.52); compare SNR + shadowing with
    # the budget 23 + 5 + 25 - PL - (N0 + 10 log10 400 MHz)
    positions = np.array([[[50.0, 0.0]]])
    config = LinkConfig(noise_psd_dbm_hz=-166)
    seed = next(
        s
        for s in range(50)
        if link_trace(positions, config, np.array([0.2]), 3.16, s).los[0, 0]
    )
    trace = link_trace(positions, config, np.array([0.2]), 3.16, seed)
    snr_no_shadow = trace.uplink_snr_db[0, 0] + trace.shadowing_db[0, 0]
    assert snr_no_shadow == pytest.approx(35.8, abs=0.1)
    # -160 dBm/Hz is 6 dB worse, with the same geometry and shadowing
    poor = link_trace(
        positions, LinkConfig(noise_psd_dbm_hz=-160), np.array([0.2]), 3.16, seed
    )
    assert trace.uplink_snr_db[0, 0] - poor.uplink_snr_db[0, 0] == pytest.approx(6.0)


def test_worse_noise_never_raises_the_rate_and_the_trace_is_seeded() -> None:
    rng = np.random.default_rng(0)
    positions = rng.uniform(-150, 150, size=(5, 40, 2))
    good = link_trace(
        positions, LinkConfig(noise_psd_dbm_hz=-166), np.full(5, 0.2), 3.16, seed=3
    )
    poor = link_trace(
        positions, LinkConfig(noise_psd_dbm_hz=-160), np.full(5, 0.2), 3.16, seed=3
    )
    again = link_trace(
        positions, LinkConfig(noise_psd_dbm_hz=-166), np.full(5, 0.2), 3.16, seed=3
    )
    assert np.all(poor.uplink_bps <= good.uplink_bps) and np.any(
        poor.uplink_bps < good.uplink_bps
    )
    np.testing.assert_array_equal(good.uplink_bps, again.uplink_bps)


def test_adaptive_prb_keeps_a_weak_link_alive() -> None:
    weak = np.array([-5.0])  # below the CQI-1 threshold on the whole carrier
    _, full = LinkConfig(adaptive_prb=False).link_rate(weak, "UL")
    cqi, narrow = LinkConfig().link_rate(weak, "UL")
    assert full[0] == 0.0 and narrow[0] > 0.0 and cqi[0] >= 1
    strong = np.array([40.0])
    assert (
        LinkConfig().link_rate(strong, "UL")[1]
        == LinkConfig(adaptive_prb=False).link_rate(strong, "UL")[1]
    )


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigError):
        LinkConfig(environment="rma")
    with pytest.raises(ConfigError):
        LinkConfig(cqi_thresholds="made-up")

"""Tests of the TS 38.214 tables, the SINR->CQI mapping and the TS 38.306 rate formula."""

import numpy as np
import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.simulation.nr_tables import (
    CQI_TABLES,
    CQI_THRESHOLDS_DB,
    MCS_TABLES,
    cqi_from_sinr,
    mcs_for_cqi,
    nr_rate_bps,
    rate_table_bps,
)


def test_cqi_spectral_efficiencies_match_ts_38_214() -> None:
    # Assert: SE = Qm R / 1024 as printed in Tables 5.2.2.1-2 / -3
    se2 = [qm * r / 1024 for qm, r in CQI_TABLES["38.214-5.2.2.1-2"]]
    se3 = [qm * r / 1024 for qm, r in CQI_TABLES["38.214-5.2.2.1-3"]]
    assert se2[0] == pytest.approx(0.1523, abs=1e-4)
    assert se2[14] == pytest.approx(5.5547, abs=1e-4)
    assert se3[6] == pytest.approx(2.7305, abs=1e-4)
    assert se3[14] == pytest.approx(7.4063, abs=1e-4)
    assert all(np.diff(se2) > 0) and all(np.diff(se3) > 0)


def test_mcs_tables_have_the_standard_sizes_and_orders() -> None:
    assert len(MCS_TABLES["38.214-5.1.3.1-1"]) == 29  # I_MCS 0..28
    assert len(MCS_TABLES["38.214-5.1.3.1-2"]) == 28  # I_MCS 0..27
    assert MCS_TABLES["38.214-5.1.3.1-2"][20] == (8, 682.5)
    assert MCS_TABLES["38.214-5.1.3.1-1"][17] == (6, 438)


@pytest.mark.parametrize(
    ("cqi", "up_mbps", "down_mbps"), [(1, 48.6, 44.3), (7, 872, 794), (15, 2365, 2155)]
)
def test_rate_formula_matches_hand_computed_values(
    cqi: int, up_mbps: float, down_mbps: float
) -> None:
    # Prepare: one layer, 264 PRB, mu 3, FR2 overheads 0.10 / 0.18 (system-model.md section 1)
    up = rate_table_bps("38.214-5.2.2.1-3", "cqi", overhead=0.10)
    down = rate_table_bps("38.214-5.2.2.1-3", "cqi", overhead=0.18)
    # Assert
    assert up[cqi] / 1e6 == pytest.approx(up_mbps, rel=2e-3)
    assert down[cqi] / 1e6 == pytest.approx(down_mbps, rel=2e-3)
    assert up[0] == 0.0


def test_rate_formula_by_hand() -> None:
    # 64QAM R=948/1024 on 66 PRB at mu 3 with 14 % overhead
    expected = 6 * 948 / 1024 * 66 * 12 / (1e-3 / (14 * 8)) * 0.86
    assert nr_rate_bps(6, 948 / 1024, num_prb=66, overhead=0.14) == pytest.approx(
        expected
    )


def test_cqi_maps_to_the_highest_mcs_not_above_its_efficiency() -> None:
    mapping = mcs_for_cqi("38.214-5.2.2.1-3")
    mcs = MCS_TABLES["38.214-5.1.3.1-2"]
    cqi = CQI_TABLES["38.214-5.2.2.1-3"]
    assert mapping[0] == -1 and mapping[1] == -1  # no 256QAM MCS is as low as CQI 1
    for q in range(2, 16):
        m = mapping[q]
        assert mcs[m][0] * mcs[m][1] <= cqi[q - 1][0] * cqi[q - 1][1] + 1e-9
        if m + 1 < len(mcs):
            assert mcs[m + 1][0] * mcs[m + 1][1] > cqi[q - 1][0] * cqi[q - 1][1]
    # the MCS basis never promises more than the CQI basis
    assert np.all(rate_table_bps(basis="mcs") <= rate_table_bps(basis="cqi") + 1e-6)


def test_cqi_from_sinr_thresholds() -> None:
    th = CQI_THRESHOLDS_DB["5g-lena"]
    sinr = np.array([-10.0, th[0], th[0] - 1e-6, th[6] + 0.01, 99.0])
    assert cqi_from_sinr(sinr, th).tolist() == [0, 1, 0, 7, 15]
    with pytest.raises(ConfigError):
        cqi_from_sinr(0.0, th[:10])

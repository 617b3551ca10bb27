"""5G NR tables: CQI and MCS (TS 38.214), SINR->CQI thresholds, and the TS 38.306 rate formula."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from splitkd_flwr.core.errors import ConfigError

# (Qm, R x 1024) for CQI 1..15; CQI 0 is "out of range" (no transmission).
CQI_TABLES: dict[str, tuple[tuple[int, float], ...]] = {
    "38.214-5.2.2.1-2": (  # 64QAM
        (2, 78),
        (2, 120),
        (2, 193),
        (2, 308),
        (2, 449),
        (2, 602),
        (4, 378),
        (4, 490),
        (4, 616),
        (6, 466),
        (6, 567),
        (6, 666),
        (6, 772),
        (6, 873),
        (6, 948),
    ),
    "38.214-5.2.2.1-3": (  # 256QAM
        (2, 78),
        (2, 193),
        (2, 449),
        (4, 378),
        (4, 490),
        (4, 616),
        (6, 466),
        (6, 567),
        (6, 666),
        (6, 772),
        (6, 873),
        (8, 711),
        (8, 797),
        (8, 885),
        (8, 948),
    ),
}
# (Qm, R x 1024) for I_MCS 0.., PDSCH/PUSCH tables 5.1.3.1-1 (64QAM) and 5.1.3.1-2 (256QAM).
MCS_TABLES: dict[str, tuple[tuple[int, float], ...]] = {
    "38.214-5.1.3.1-1": tuple(
        [(2, r) for r in (120, 157, 193, 251, 308, 379, 449, 526, 602, 679)]
        + [(4, r) for r in (340, 378, 434, 490, 553, 616, 658)]
        + [(6, r) for r in (438, 466, 517, 567, 616, 666, 719, 772, 822, 873, 910, 948)]
    ),
    "38.214-5.1.3.1-2": tuple(
        [(2, r) for r in (120, 193, 308, 449, 602)]
        + [(4, r) for r in (378, 434, 490, 553, 616, 658)]
        + [(6, r) for r in (466, 517, 567, 616, 666, 719, 772, 822, 873)]
        + [(8, r) for r in (682.5, 711, 754, 797, 841, 885, 916.5, 948)]
    ),
}
MCS_FOR_CQI_TABLE = {
    "38.214-5.2.2.1-2": "38.214-5.1.3.1-1",
    "38.214-5.2.2.1-3": "38.214-5.1.3.1-2",
}

# Lowest SINR (dB) at which CQI 1..15 meets 10% BLER. Not standardised; see docs/case-study.md.
CQI_THRESHOLDS_DB: dict[str, tuple[float, ...]] = {
    # ns-3 5G-LENA NrAmc Shannon-gap model (gap 8.2 dB), for table 5.2.2.1-3; UL and DL alike
    "5g-lena": (
        -1.3,
        2.9,
        7.4,
        10.7,
        12.6,
        14.5,
        15.7,
        17.7,
        19.6,
        21.6,
        23.5,
        24.8,
        26.9,
        29.0,
        30.5,
    ),
    # MATLAB 5G Toolbox system-level example (DL link-level BLER curves), for table 5.2.2.1-3
    "matlab": (
        -3.46,
        1.54,
        6.54,
        11.05,
        13.54,
        16.04,
        17.54,
        20.04,
        22.04,
        24.43,
        26.93,
        27.43,
        29.43,
        32.43,
        35.43,
    ),
    # the common LTE 10%-BLER AWGN set, for table 5.2.2.1-2
    "lte-awgn": (
        -6.7,
        -4.7,
        -2.3,
        0.2,
        2.4,
        4.3,
        5.9,
        8.1,
        10.3,
        11.7,
        14.1,
        16.3,
        18.7,
        21.0,
        22.7,
    ),
}
TABLE_OF_THRESHOLDS = {
    "5g-lena": "38.214-5.2.2.1-3",
    "matlab": "38.214-5.2.2.1-3",
    "lte-awgn": "38.214-5.2.2.1-2",
}

OVERHEAD = {
    ("FR1", "DL"): 0.14,
    ("FR1", "UL"): 0.08,
    ("FR2", "DL"): 0.18,
    ("FR2", "UL"): 0.10,
}


def cqi_from_sinr(
    sinr_db: np.ndarray | float, thresholds_db: Sequence[float]
) -> np.ndarray:
    """Highest CQI whose threshold the SINR reaches; 0 below the CQI-1 threshold."""
    th = np.asarray(thresholds_db, dtype=float)
    if th.shape != (15,) or np.any(np.diff(th) <= 0):
        raise ConfigError(
            f"CQI thresholds must be 15 increasing values (dB), got {list(th)}"
        )
    return np.searchsorted(th, np.asarray(sinr_db, dtype=float), side="right")


def mcs_for_cqi(cqi_table: str) -> np.ndarray:
    """(16,) I_MCS for CQI 0..15: the highest MCS whose spectral efficiency does not exceed
    the CQI's; -1 where none does (CQI 0, and CQI 1 of the 256QAM family: then the CQI's own
    modulation and code rate are used)."""
    cqi = np.array([qm * r for qm, r in CQI_TABLES[cqi_table]])
    mcs = np.array([qm * r for qm, r in MCS_TABLES[MCS_FOR_CQI_TABLE[cqi_table]]])
    # MCS SE is ascending
    idx = np.searchsorted(mcs, cqi * (1 + 1e-12), side="right") - 1
    return np.concatenate([[-1], idx])


def nr_rate_bps(
    qm: np.ndarray | float,
    code_rate: np.ndarray | float,
    num_prb: int = 264,
    mu: int = 3,
    overhead: float = 0.10,
    layers: int = 1,
    scaling: float = 1.0,
) -> np.ndarray:
    """TS 38.306 4.1.2: ``layers Qm f R (N_PRB 12 / T_s) (1 - OH)`` with ``T_s = 1e-3 / (14 2^mu)``."""
    symbol_s = 1e-3 / (14 * 2**mu)
    resource_elements_per_s = num_prb * 12 / symbol_s
    return (
        layers
        * np.asarray(qm)
        * scaling
        * np.asarray(code_rate)
        * resource_elements_per_s
        * (1 - overhead)
    )


def rate_table_bps(
    cqi_table: str = "38.214-5.2.2.1-3",
    basis: str = "mcs",
    num_prb: int = 264,
    mu: int = 3,
    overhead: float = 0.10,
    layers: int = 1,
) -> np.ndarray:
    """(16,) link rate for CQI 0..15 (0 at CQI 0).

    ``basis="cqi"`` uses the CQI entry's modulation and code rate; ``"mcs"`` the MCS the CQI
    maps to (:func:`mcs_for_cqi`), as a scheduler would.
    """
    if cqi_table not in CQI_TABLES:
        raise ConfigError(
            f"unknown CQI table {cqi_table!r}: use one of {sorted(CQI_TABLES)}"
        )
    if basis not in ("cqi", "mcs"):
        raise ConfigError(f"rate basis must be 'cqi' or 'mcs', got {basis!r}")
    entries = list(CQI_TABLES[cqi_table])
    if basis == "mcs":
        mcs_table = MCS_TABLES[MCS_FOR_CQI_TABLE[cqi_table]]
        entries = [
            mcs_table[m] if m >= 0 else e
            for m, e in zip(mcs_for_cqi(cqi_table)[1:], entries)
        ]
    qm = np.array([0.0] + [q for q, _ in entries])
    rate = np.array([0.0] + [r / 1024 for _, r in entries])
    return nr_rate_bps(qm, rate, num_prb, mu, overhead, layers)

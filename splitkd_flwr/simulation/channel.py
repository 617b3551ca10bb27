"""Urban mmWave link: TR 38.901 path loss, LOS state and correlated shadowing, SNR -> CQI -> rate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.simulation.nr_tables import (
    CQI_THRESHOLDS_DB,
    OVERHEAD,
    TABLE_OF_THRESHOLDS,
    cqi_from_sinr,
    rate_table_bps,
)

NOISE_PSD_DBM_HZ = {"good": -166.0, "normal": -163.0, "poor": -160.0}  # paper Section V

# TR 38.901: BS height (Table 7.4.1-1), shadow-fading sigma (Table 7.4.1-1), SF decorrelation
# distance (Table 7.5-6), LOS-state correlation distance (Table 7.6.3.1-2), minimum 2D distance.
ENVIRONMENTS = {
    "umi": {
        "bs_height_m": 10.0,
        "sigma_db": (4.0, 7.82),
        "sf_corr_m": (10.0, 13.0),
        "los_corr_m": 50.0,
        "min_d2d_m": 10.0,
    },
    "uma": {
        "bs_height_m": 25.0,
        "sigma_db": (4.0, 6.0),
        "sf_corr_m": (37.0, 50.0),
        "los_corr_m": 50.0,
        "min_d2d_m": 35.0,
    },
}
SPEED_OF_LIGHT = 299_792_458.0


def los_probability(d2d_m: np.ndarray, environment: str = "umi") -> np.ndarray:
    """TR 38.901 Table 7.4.2-1 LOS probability (outdoor UT, h_UT <= 13 m for UMa)."""
    d = np.maximum(np.asarray(d2d_m, dtype=float), 1e-9)
    scale = 36.0 if environment == "umi" else 63.0
    p = 18.0 / d + np.exp(-d / scale) * (1.0 - 18.0 / d)
    return np.where(d <= 18.0, 1.0, p)


def path_loss_db(
    d2d_m: np.ndarray,
    los: np.ndarray | bool,
    environment: str = "umi",
    carrier_hz: float = 28e9,
    bs_height_m: float | None = None,
    ut_height_m: float = 1.5,
) -> np.ndarray:
    """TR 38.901 Table 7.4.1-1 UMi street canyon / UMa path loss (dB), LOS or NLOS."""
    if environment not in ENVIRONMENTS:
        raise ConfigError(
            f"environment must be one of {sorted(ENVIRONMENTS)}, got {environment!r}"
        )
    h_bs = (
        ENVIRONMENTS[environment]["bs_height_m"] if bs_height_m is None else bs_height_m
    )
    fc = carrier_hz / 1e9
    d2d = np.asarray(d2d_m, dtype=float)
    d3d = np.sqrt(d2d**2 + (h_bs - ut_height_m) ** 2)
    # effective env. height 1 m
    d_bp = 4 * (h_bs - 1.0) * (ut_height_m - 1.0) * carrier_hz / SPEED_OF_LIGHT
    if environment == "umi":
        pl1 = 32.4 + 21 * np.log10(d3d) + 20 * math.log10(fc)
        pl2 = (
            32.4
            + 40 * np.log10(d3d)
            + 20 * math.log10(fc)
            - 9.5 * math.log10(d_bp**2 + (h_bs - ut_height_m) ** 2)
        )
        nlos = (
            35.3 * np.log10(d3d)
            + 22.4
            + 21.3 * math.log10(fc)
            - 0.3 * (ut_height_m - 1.5)
        )
    else:
        pl1 = 28.0 + 22 * np.log10(d3d) + 20 * math.log10(fc)
        pl2 = (
            28.0
            + 40 * np.log10(d3d)
            + 20 * math.log10(fc)
            - 9 * math.log10(d_bp**2 + (h_bs - ut_height_m) ** 2)
        )
        nlos = (
            13.54
            + 39.08 * np.log10(d3d)
            + 20 * math.log10(fc)
            - 0.6 * (ut_height_m - 1.5)
        )
    pl_los = np.where(d2d <= d_bp, pl1, pl2)
    return np.where(los, pl_los, np.maximum(pl_los, nlos))


def correlated_gaussian(
    step_m: np.ndarray, corr_m: float, rng: np.random.Generator
) -> np.ndarray:
    """Unit Gaussian AR(1) along trajectories: ``z_t = R z_{t-1} + sqrt(1 - R^2) n_t``,
    ``R = exp(-step / corr)``. ``step_m`` (V, T) is the distance moved into each sample."""
    noise = rng.standard_normal(
        step_m.T.shape
    ).T  # drawn time-major: a longer trace keeps the prefix
    r = np.exp(-step_m / corr_m)
    z = np.empty_like(step_m)
    z[:, 0] = noise[:, 0]
    for t in range(1, step_m.shape[1]):
        z[:, t] = r[:, t] * z[:, t - 1] + np.sqrt(1.0 - r[:, t] ** 2) * noise[:, t]
    return z


@dataclass(frozen=True)
class LinkConfig:
    """Radio set-up of the cell; every default is named in docs/case-study.md."""

    environment: str = "umi"  # TR 38.901 scenario: "umi" street canyon or "uma"
    carrier_hz: float = 28e9  # n257/n261 mmWave
    ut_height_m: float = 1.5  # TR 38.901 default UT height
    noise_psd_dbm_hz: float = NOISE_PSD_DBM_HZ["normal"]
    noise_bandwidth_hz: float = 400e6  # the channel bandwidth
    bs_gain_dbi: float = 25.0  # [assumed] BS array gain
    ue_gain_dbi: float = 5.0  # [assumed] UE antenna gain
    cqi_thresholds: str = "5g-lena"  # named table in nr_tables.CQI_THRESHOLDS_DB
    # Rate from the MCS the CQI maps to ("cqi": the CQI entry itself)
    rate_basis: str = "mcs"
    # 400 MHz at mu = 3 (120 kHz SCS); one device uses the carrier at a time
    num_prb: int = 264
    mu: int = 3
    mimo_layers: int = 1
    # a power-limited transmitter is scheduled on fewer PRBs (num_prb / 2^k) when that gives a
    # higher rate: the same power over less bandwidth raises the SNR (TS 38.213 power control)
    adaptive_prb: bool = True
    thresholds_db: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.environment not in ENVIRONMENTS:
            raise ConfigError(
                f"environment must be one of {sorted(ENVIRONMENTS)}, got {self.environment!r}"
            )
        if self.cqi_thresholds not in CQI_THRESHOLDS_DB:
            raise ConfigError(
                f"cqi_thresholds must be one of {sorted(CQI_THRESHOLDS_DB)}, got {self.cqi_thresholds!r}"
            )
        object.__setattr__(
            self, "thresholds_db", CQI_THRESHOLDS_DB[self.cqi_thresholds]
        )

    def rates_bps(self, direction: str) -> np.ndarray:
        """(16,) rate per CQI 0..15 on all PRBs, ``direction`` "UL" or "DL" (FR2 overheads)."""
        table = TABLE_OF_THRESHOLDS[self.cqi_thresholds]
        return rate_table_bps(
            table,
            self.rate_basis,
            self.num_prb,
            self.mu,
            OVERHEAD[("FR2", direction)],
            self.mimo_layers,
        )

    def link_rate(
        self, snr_db: np.ndarray, direction: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(CQI, rate in bit/s) for full-band SNRs, on the best PRB allocation."""
        full = self.rates_bps(direction)
        fractions = [1.0]
        if self.adaptive_prb:
            fractions = [
                max(self.num_prb >> k, 1) / self.num_prb
                for k in range(self.num_prb.bit_length())
            ]
        snr = np.asarray(snr_db, dtype=float)
        best_cqi, best_bps = np.zeros(snr.shape, dtype=int), np.zeros(snr.shape)
        for frac in fractions:  # less bandwidth: less noise, fewer PRBs
            cqi = cqi_from_sinr(snr - 10 * math.log10(frac), self.thresholds_db)
            bps = full[cqi] * frac
            better = bps > best_bps
            best_cqi, best_bps = (
                np.where(better, cqi, best_cqi),
                np.where(better, bps, best_bps),
            )
        return best_cqi, best_bps


@dataclass(frozen=True)
class LinkTrace:
    """Per vehicle (rows) and sample (columns): geometry, full-band SNR, scheduled CQI, rates."""

    d2d_m: np.ndarray
    los: np.ndarray
    shadowing_db: np.ndarray
    uplink_snr_db: np.ndarray
    downlink_snr_db: np.ndarray
    uplink_cqi: np.ndarray
    downlink_cqi: np.ndarray
    uplink_bps: np.ndarray
    downlink_bps: np.ndarray


def link_trace(
    positions_m: np.ndarray,
    config: LinkConfig,
    ue_tx_power_w: np.ndarray,
    bs_tx_power_w: float,
    seed: int = 0,
) -> LinkTrace:
    """Links of V vehicles at T samples; ``positions_m`` (V, T, 2) relative to the base station."""
    env = ENVIRONMENTS[config.environment]
    ss = np.random.SeedSequence(seed)
    los_rng, los_sf_rng, nlos_sf_rng = (np.random.default_rng(s) for s in ss.spawn(3))
    d2d = np.maximum(np.linalg.norm(positions_m, axis=-1), env["min_d2d_m"])  # (V, T)
    # (V, T)
    step = np.linalg.norm(
        np.diff(positions_m, axis=1, prepend=positions_m[:, :1]), axis=-1
    )
    # spatially consistent LOS state (TR 38.901 7.6.3.3): a correlated uniform against P_LOS
    z = correlated_gaussian(step, env["los_corr_m"], los_rng)
    uniform = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    los = uniform < los_probability(d2d, config.environment)
    sigma_los, sigma_nlos = env["sigma_db"]
    shadow = np.where(
        los,
        sigma_los * correlated_gaussian(step, env["sf_corr_m"][0], los_sf_rng),
        sigma_nlos * correlated_gaussian(step, env["sf_corr_m"][1], nlos_sf_rng),
    )
    loss = (
        path_loss_db(
            d2d, los, config.environment, config.carrier_hz, None, config.ut_height_m
        )
        + shadow
    )
    noise_dbm = config.noise_psd_dbm_hz + 10 * math.log10(config.noise_bandwidth_hz)
    gains = config.bs_gain_dbi + config.ue_gain_dbi
    # (V, 1)
    ue_dbm = 10 * np.log10(np.asarray(ue_tx_power_w, dtype=float) * 1e3)[:, None]
    up_snr = ue_dbm + gains - loss - noise_dbm
    down_snr = 10 * math.log10(bs_tx_power_w * 1e3) + gains - loss - noise_dbm
    up_cqi, up_bps = config.link_rate(up_snr, "UL")
    down_cqi, down_bps = config.link_rate(down_snr, "DL")
    return LinkTrace(
        d2d_m=d2d,
        los=los,
        shadowing_db=shadow,
        uplink_snr_db=up_snr,
        downlink_snr_db=down_snr,
        uplink_cqi=up_cqi,
        downlink_cqi=down_cqi,
        uplink_bps=up_bps,
        downlink_bps=down_bps,
    )

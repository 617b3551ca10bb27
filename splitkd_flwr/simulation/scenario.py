"""The modelled world of a run: which hardware each device has, its link each round, the round's cost."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import numpy as np

from splitkd_flwr.core.components import load_component
from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState, Workload
from splitkd_flwr.simulation.channel import (
    NOISE_PSD_DBM_HZ,
    LinkConfig,
    LinkTrace,
    link_trace,
)
from splitkd_flwr.simulation.cost import CostModel, DeviceArrays
from splitkd_flwr.simulation.devices import DeviceProfile, Fleet, load_fleet
from splitkd_flwr.simulation.mobility import ManhattanGrid, Mobility, Route


class Link(NamedTuple):
    """A device's modelled 5G NR link at one moment."""

    uplink_bps: float
    downlink_bps: float
    snr_db: float  # uplink, over the whole carrier


def noise_psd(value: str | float) -> float:
    """dBm/Hz of a named condition (good / normal / poor) or of a number."""
    if isinstance(value, str) and value.lower() in NOISE_PSD_DBM_HZ:
        return NOISE_PSD_DBM_HZ[value.lower()]
    try:
        return float(value)
    except ValueError:
        raise ConfigError(
            f"noise must be one of {sorted(NOISE_PSD_DBM_HZ)} or dBm/Hz, got {value!r}"
        ) from None


@dataclass(frozen=True)
class ScenarioConfig:
    """Scenario options; run-config keys are these names hyphenated, with a ``scenario-`` prefix."""

    fleet: str = ""  # TOML file of device profiles; "" = paper Table II
    # Good / normal / poor (-166 / -163 / -160 dBm/Hz) or a number
    noise: str = "normal"
    environment: str = "umi"  # TR 38.901 "umi" (street canyon) or "uma"
    cqi_thresholds: str = "5g-lena"  # SINR -> CQI table, see nr_tables.py
    # "manhattan-grid", "route" or "pkg.mod:Class" (a Mobility)
    mobility: str = "manhattan-grid"
    speed_kmh: float = 30.0  # paper Section V
    # Mobility time between round starts, the same for every plan
    round_interval_s: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.round_interval_s < 0:
            raise ConfigError(
                f"round-interval-s must be >= 0, got {self.round_interval_s}"
            )


def _mobility(config: ScenarioConfig) -> Mobility:
    if config.mobility == "manhattan-grid":
        return ManhattanGrid(speed_kmh=config.speed_kmh, seed=config.seed)
    if config.mobility == "route":
        return Route(speed_kmh=config.speed_kmh)
    return load_component(config.mobility, Mobility, {})


class Scenario:
    """Vehicles with the fleet's hardware driving in one cell; links are sampled at round starts.

    Round ``r`` starts at ``(r - 1) * round_interval_s`` seconds of the mobility trace, for every
    plan alike, so methods compared on one scenario see the same channels.
    """

    def __init__(
        self,
        config: ScenarioConfig | None = None,
        *,
        fleet: Fleet | None = None,
        mobility: Mobility | None = None,
        link: LinkConfig | None = None,
    ) -> None:
        self.config = config or ScenarioConfig()
        self.fleet = fleet or load_fleet(self.config.fleet or None)
        self.mobility = mobility or _mobility(self.config)
        self.link_config = link or LinkConfig(
            environment=self.config.environment,
            noise_psd_dbm_hz=noise_psd(self.config.noise),
            cqi_thresholds=self.config.cqi_thresholds,
        )
        self._trace: LinkTrace | None = None
        # (V, T, 2) at round starts, shared by with_noise
        self._positions: np.ndarray | None = None

    @classmethod
    def from_config(
        cls, run_config: Mapping[str, Any], prefix: str = "scenario-"
    ) -> Scenario:
        """Build from run-config keys ``<prefix><field>`` (e.g. ``scenario-noise = "poor"``)."""
        names = {f.name.replace("_", "-"): f for f in fields(ScenarioConfig)}
        values = {}
        for key, value in run_config.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :]
            if name not in names:
                raise ConfigError(
                    f"unknown scenario key {key!r}; known {sorted(prefix + n for n in names)}"
                )
            values[names[name].name] = type(
                getattr(ScenarioConfig(), names[name].name)
            )(value)
        return cls(ScenarioConfig(**values))

    def with_noise(self, noise: str | float) -> Scenario:
        """The same scenario (same trajectories and shadowing) under another noise level."""
        other = Scenario(
            replace(self.config, noise=str(noise)),
            fleet=self.fleet,
            mobility=self.mobility,
            link=replace(self.link_config, noise_psd_dbm_hz=noise_psd(noise)),
        )
        other._positions = self._positions
        if self._trace is not None:
            other.trace(self._trace.uplink_bps.shape[1])
        return other

    @property
    def num_devices(self) -> int:
        """Vehicles in the cell: one per entry of the fleet's device list."""
        return len(self.fleet.devices)

    def profile_of(self, partition_id: int) -> DeviceProfile:
        """The hardware of device ``partition_id``."""
        self._check(partition_id)
        return self.fleet.profile_of(partition_id)

    def trace(self, num_rounds: int) -> LinkTrace:
        """Links of every vehicle at the starts of rounds 1..num_rounds, shape (V, >= num_rounds)."""
        if self._trace is None or self._trace.uplink_bps.shape[1] < num_rounds:
            horizon = max(
                num_rounds,
                2 * (0 if self._trace is None else self._trace.uplink_bps.shape[1]),
                64,
            )
            if self._positions is None or self._positions.shape[1] < horizon:
                times = np.arange(horizon) * self.config.round_interval_s
                # (V, T, 2)
                self._positions = self.mobility.positions(self.num_devices, times)
            positions = self._positions[:, :horizon]
            tx = np.array(
                [self.fleet.profile_of(v).tx_power_w for v in range(self.num_devices)]
            )
            self._trace = link_trace(
                positions,
                self.link_config,
                tx,
                self.fleet.server_profile.tx_power_w,
                seed=self.config.seed,
            )
        return self._trace

    def link_at(self, partition_id: int, server_round: int) -> Link:
        """Device ``partition_id``'s link at the start of ``server_round`` (1-based)."""
        self._check(partition_id)
        if server_round < 1:
            raise ConfigError(f"server_round must be >= 1, got {server_round}")
        t = self.trace(server_round)
        i = (partition_id, server_round - 1)
        return Link(
            float(t.uplink_bps[i]), float(t.downlink_bps[i]), float(t.uplink_snr_db[i])
        )

    def device_state(
        self,
        partition_id: int,
        server_round: int,
        node_id: int | None = None,
        **usage: Any,
    ) -> DeviceState:
        """What a selector and planner see of device ``partition_id`` in ``server_round``;
        ``usage`` sets energy_used_j, energy_budget_j, rounds_trained."""
        up, down, snr = self.link_at(partition_id, server_round)
        profile = self.fleet.devices[partition_id]
        return DeviceState(
            partition_id if node_id is None else node_id,
            partition_id,
            profile,
            up,
            down,
            snr,
            **usage,
        )

    def round_metrics(
        self,
        cut_layer: int,
        server_clock_hz: float | None,
        workload: Workload,
        partition_id: int,
        server_round: int,
    ) -> dict[str, float]:
        """The modelled delay (s), energy (J) and bytes of a round trained at ``cut_layer``
        (keys as ``Plan.modelled``); ``server_clock_hz`` None means the server's top clock."""
        if not 1 <= cut_layer <= workload.num_student_layers - 1:
            raise ConfigError(
                f"cut_layer must be in 1..{workload.num_student_layers - 1}, got {cut_layer}"
            )
        up, down, _ = self.link_at(partition_id, server_round)
        server = self.fleet.server_profile
        cost = CostModel(workload, server).evaluate(
            DeviceArrays.of([self.profile_of(partition_id)]),
            [up],
            [down],
            [[[server.clock_hz if server_clock_hz is None else server_clock_hz]]],
            [[[cut_layer - 1]]],
        )
        return cost.record((0, 0, 0))

    def _check(self, partition_id: int) -> None:
        if not 0 <= partition_id < self.num_devices:
            raise ConfigError(
                f"partition_id must be in 0..{self.num_devices - 1}, got {partition_id}"
            )

"""The paper's case study: proposed vs server-only vs device-only over a mobility trace."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState, Workload
from splitkd_flwr.simulation.cost import DeviceArrays
from splitkd_flwr.simulation.planning import DeviceOnly, EnergyOptimal, Plan, ServerOnly
from splitkd_flwr.simulation.scenario import Scenario, ScenarioConfig
from splitkd_flwr.simulation.selection import load_selector

METHODS = ("proposed", "server-only", "device-only")
NOISES = ("good", "normal", "poor")
PAPER_REDUCTIONS = {  # Section V-B: "at least" these, per round
    "delay_vs_server_only": 0.16,
    "energy_vs_server_only": 0.22,
    "energy_vs_device_only": 0.19,
}


@dataclass(frozen=True)
class CaseStudyConfig:
    """Everything the case study depends on; defaults and their sources in docs/case-study.md."""

    rounds: int = 200  # rounds per channel condition (10 s of mobility apart)
    noises: tuple[str, ...] = NOISES
    batch_size: int = 8  # [assumed] sequences per mini-batch
    seq_len: int = 512  # [assumed] tokens per sequence
    batches_per_round: int = 10  # [assumed] mini-batches x local epochs per round
    wire_bytes: int = 2  # bf16 smashed data and gradients
    param_bytes: int = 2  # bf16 device-side weights, down at the start, up at the end
    # Bound = (1 + slack) x the round's least achievable delay
    delay_slack: float = 0.25
    # An absolute bound instead (same for every round)
    delay_bound_s: float | None = None
    selector: str = "round-robin"
    # Sensitivity knobs: multiply every profile's eta ...
    scale_utilisation: float = 1.0
    scale_kappa_server: float = 1.0  # ... the server's kappa ...
    scale_static_power: float = 1.0  # ... and every static power
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.delay_slack < 0:
            raise ConfigError(f"delay slack must be >= 0, got {self.delay_slack}")

    @property
    def workload(self) -> Workload:
        """The modelled round: Llama-3.2-1B (16 layers) student, Llama-3.1-8B teacher."""
        return Workload(
            16,
            self.batch_size,
            self.seq_len,
            self.batches_per_round,
            self.wire_bytes,
            self.param_bytes,
        )


def scaled_scenario(config: CaseStudyConfig) -> Scenario:
    scenario = Scenario(config.scenario)
    fleet = scenario.fleet
    profiles = {
        name: replace(
            p,
            utilisation=min(1.0, p.utilisation * config.scale_utilisation),
            static_power_w=p.static_power_w * config.scale_static_power,
            kappa=p.kappa
            * (config.scale_kappa_server if name == fleet.server else 1.0),
        )
        for name, p in fleet.profiles.items()
    }
    return Scenario(config.scenario, fleet=replace(fleet, profiles=profiles))


@dataclass
class CaseStudyResult:
    """One row per (noise, round, method): the plan and its modelled cost."""

    config: CaseStudyConfig
    rows: list[dict[str, Any]]

    def column(self, key: str, noise: str, method: str) -> np.ndarray:
        """Values of ``key`` for one condition and method, in round order."""
        return np.array(
            [r[key] for r in self.rows if r["noise"] == noise and r["method"] == method]
        )

    def summary(self) -> dict[str, dict[str, float]]:
        """Per noise: mean delay / energy per method and the proposed method's reductions."""
        out = {}
        for noise in self.config.noises:
            means = {
                f"{m}_{k}": float(self.column(k, noise, m).mean())
                for m in METHODS
                for k in ("delay_s", "energy_j")
            }
            means["delay_vs_server_only"] = (
                1 - means["proposed_delay_s"] / means["server-only_delay_s"]
            )
            means["energy_vs_server_only"] = (
                1 - means["proposed_energy_j"] / means["server-only_energy_j"]
            )
            means["energy_vs_device_only"] = (
                1 - means["proposed_energy_j"] / means["device-only_energy_j"]
            )
            means["infeasible_rounds"] = float(
                (~self.column("feasible", noise, "proposed").astype(bool)).sum()
            )
            means["proposed_mean_cut"] = float(
                self.column("cut_layer", noise, "proposed").mean()
            )
            out[noise] = means
        return out


def _row(
    noise: str, server_round: int, state: DeviceState, method: str, plan: Plan
) -> dict[str, Any]:
    return {
        "noise": noise,
        "round": server_round,
        "partition_id": state.partition_id,
        "profile": state.profile_name,
        "uplink_mbps": state.uplink_bps / 1e6,
        "downlink_mbps": state.downlink_bps / 1e6,
        "snr_db": state.snr_db,
        "method": method,
        "cut_layer": plan.cut_layer,
        "feasible": plan.feasible,
        **{k: v for k, v in plan.modelled.items() if k != "server_clock_hz"},
        "server_clock_ghz": plan.modelled["server_clock_hz"] / 1e9,
    }


def run_case_study(
    config: CaseStudyConfig = CaseStudyConfig(),
    on_step: Callable[[str], None] | None = None,
) -> CaseStudyResult:
    """Plan every round of the trace with the three methods under each noise condition."""
    base = scaled_scenario(config)
    base.trace(config.rounds)  # trajectories once, shared by every noise condition
    workload = config.workload
    rows: list[dict[str, Any]] = []
    for noise in config.noises:
        scenario = base.with_noise(noise)
        fleet = scenario.fleet
        selector = load_selector(config.selector, seed=config.scenario.seed)
        states = []
        for r in range(1, config.rounds + 1):
            devices = [scenario.device_state(p, r) for p in range(scenario.num_devices)]
            states.append(selector.select(devices, r))
        proposed = EnergyOptimal(
            workload, delay_bound_s=config.delay_bound_s, fleet=fleet
        )
        bounds = config.delay_bound_s
        if (
            bounds is None
        ):  # relative bound: (1 + slack) x the least delay this round allows
            bounds = (1 + config.delay_slack) * least_delay_s(proposed, states)
        server_only, device_only = (
            ServerOnly(workload, fleet=fleet),
            DeviceOnly(workload, fleet=fleet),
        )
        methods = {
            "proposed": proposed.plan_many(
                states,
                0,
                warn=False,
                delay_bounds_s=np.broadcast_to(bounds, (len(states),)),
            ),
            "server-only": [server_only.plan(s, r) for r, s in enumerate(states, 1)],
            "device-only": [device_only.plan(s, r) for r, s in enumerate(states, 1)],
        }
        for method, plans in methods.items():
            rows.extend(
                _row(noise, r, s, method, p)
                for r, (s, p) in enumerate(zip(states, plans), 1)
            )
        if on_step is not None:
            on_step(noise)
    return CaseStudyResult(config, rows)


def least_delay_s(planner: EnergyOptimal, states: Sequence[DeviceState]) -> np.ndarray:
    """(D,) the least round delay over all cuts at the server's top clock."""
    arrays = DeviceArrays.of([planner.fleet.profile(s.profile_name) for s in states])
    up = np.array([s.uplink_bps for s in states])
    down = np.array([s.downlink_bps for s in states])
    return (
        planner.cost.evaluate(arrays, up, down, planner.clock_steps_hz[-1:])
        .delay_s[..., 0]
        .min(axis=1)
    )


def tradeoff(
    config: CaseStudyConfig,
    slacks: Sequence[float],
    on_step: Callable[[str], None] | None = None,
) -> list[dict[str, float]]:
    """Mean delay and energy of the proposed plan per noise as the delay slack varies."""
    out = []
    for slack in slacks:
        summary = run_case_study(
            replace(config, delay_slack=slack, delay_bound_s=None)
        ).summary()
        for noise, s in summary.items():
            out.append(
                {
                    "slack": slack,
                    "noise": noise,
                    "delay_s": s["proposed_delay_s"],
                    "energy_j": s["proposed_energy_j"],
                    "server_only_delay_s": s["server-only_delay_s"],
                    "server_only_energy_j": s["server-only_energy_j"],
                    "device_only_delay_s": s["device-only_delay_s"],
                    "device_only_energy_j": s["device-only_energy_j"],
                }
            )
        if on_step is not None:
            on_step(f"slack {slack}")
    return out


SENSITIVITY: dict[
    str, tuple[str, tuple[Any, ...]]
] = {  # label: (config field, values swept)
    "utilisation eta (x)": ("scale_utilisation", (0.5, 1.0, 2.0)),
    "server kappa (x)": ("scale_kappa_server", (0.5, 1.0, 2.0)),
    "static power (x)": ("scale_static_power", (0.0, 1.0, 4.0)),
    "batches per round": ("batches_per_round", (2, 10, 50)),
    "sequence length": ("seq_len", (128, 512, 2048)),
    "delay slack": ("delay_slack", (0.05, 0.25, 1.0)),
    "weights dtype bytes": ("param_bytes", (2, 4)),
}


def sensitivity(
    config: CaseStudyConfig,
    noise: str = "normal",
    on_step: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """The three reductions as each parameter of :data:`SENSITIVITY` moves alone."""
    out = []
    for label, (name, values) in SENSITIVITY.items():
        for value in values:
            summary = run_case_study(
                replace(config, noises=(noise,), **{name: value})
            ).summary()[noise]
            out.append(
                {
                    "parameter": label,
                    "value": value,
                    **{k: summary[k] for k in PAPER_REDUCTIONS},
                }
            )
        if on_step is not None:
            on_step(label)
    return out

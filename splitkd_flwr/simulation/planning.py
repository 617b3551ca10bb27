"""Cut-layer and server-clock planners."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitkd_flwr.core.components import load_component
from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState, Workload
from splitkd_flwr.simulation.cost import (
    CostModel,
    DeviceArrays,
    RoundCost,
    link_rates,
)
from splitkd_flwr.simulation.devices import DeviceProfile, Fleet, load_fleet
from splitkd_flwr.simulation.memory import GB, MEMORY_HEADROOM, MemoryModel, fits

logger = logging.getLogger(__name__)

# Index of the one clock (the top step) in a cost evaluated at ``steps[-1:]``.
_TOP = 0


@dataclass(frozen=True)
class Plan:
    """A round's decision: where to cut the student and how fast to clock the server GPU."""

    cut_layer: int
    server_clock_hz: float | None = None  # None: leave the clock alone
    # False: no plan met the delay bound; this one has the least delay
    feasible: bool = True
    # e.g. delay_s, energy_j per part
    modelled: dict[str, float] = field(default_factory=dict)


class Planner(ABC):
    """Choose the cut layer (and server clock) for the selected device.

    Subclass it and name your class in the run config
    (``planner = "mypkg.mymod:MyPlanner"``); it is built as
    ``MyPlanner(workload, cut_layer=..., delay_bound_s=...)``, plus the run's extra options
    (``fleet``; ``min_cut_layer``, the shallowest cut allowed, m + 1 with
    ``device-private-layers = m``) if its constructor names them or takes ``**options``.
    A run refuses, before the round, a plan whose cut is not above the private layers.
    """

    def __init__(
        self, workload: Workload, cut_layer: int = 1, delay_bound_s: float | None = None
    ) -> None:
        self.workload = workload
        self.cut_layer = cut_layer
        self.delay_bound_s = delay_bound_s

    @abstractmethod
    def plan(self, device: DeviceState, server_round: int) -> Plan:
        """Return the plan for ``device`` in ``server_round``."""


class ModelledPlanner(Planner):
    """A planner that sizes each plan with the cost model (simulation/cost.py).

    Parameters
    ----------
    workload, cut_layer, delay_bound_s
        As :class:`Planner`; ``delay_bound_s`` is the round's delay bound (None: unbounded).
    fleet : Fleet | str | Path | None
        Device profiles (``DeviceState.profile_name`` keys) and the server; a TOML path,
        or None for the paper's Table II fleet.
    attention_factor : float
        Passed to :class:`CostModel`.
    min_cut_layer : int
        The shallowest cut a plan may choose (a run with ``device-private-layers = m``
        passes m + 1: the device's private layers must stay below the cut).
    """

    def __init__(
        self,
        workload: Workload,
        cut_layer: int = 1,
        delay_bound_s: float | None = None,
        *,
        fleet: Fleet | str | Path | None = None,
        attention_factor: float = 1.0,
        min_cut_layer: int = 1,
    ) -> None:
        super().__init__(workload, cut_layer, delay_bound_s)
        if delay_bound_s is not None and not delay_bound_s > 0:
            raise ConfigError(
                f"delay-bound-s must be > 0 or unset, got {delay_bound_s}"
            )
        top = workload.num_student_layers - 1
        if not 1 <= min_cut_layer <= top:
            raise ConfigError(
                f"no cut is left above the device's private layers: the shallowest "
                f"allowed cut is {min_cut_layer} (device-private-layers = "
                f"{min_cut_layer - 1}) but the student's cuts are 1..{top}"
            )
        self.min_cut_layer = min_cut_layer
        self.fleet = fleet if isinstance(fleet, Fleet) else load_fleet(fleet)
        self.server = self.fleet.server_profile
        self.cost = CostModel(workload, self.server, attention_factor)
        # (C,) the cuts a plan may choose at all, whatever the memory
        self.cut_allowed = self.cost.cuts >= min_cut_layer
        self.clock_steps_hz = np.asarray(self.server.clock_steps_hz)  # (K,) ascending
        self._init_memory(workload)

    def _init_memory(self, workload: Workload) -> None:
        """Size each side per cut (memory model); the server's fit masks cuts for all."""
        memory = MemoryModel(workload)
        self.device_memory_bytes = memory.device().total  # (C,)
        self.server_memory_bytes = memory.server().total  # (C,)
        self.memory_limits = workload.memory_limits
        self.server_fits = fits(self.server_memory_bytes, self.server.memory_bytes)
        if not self.memory_limits:
            self.server_fits = np.ones_like(self.server_fits)
        elif not self.server_fits.any():
            # Nothing to choose between: plan as if it fit, but say so once.
            logger.warning(
                "the modelled server (%s, %.0f GB) fits no cut: it needs %.1f GB at "
                "least; consider lora-rank, teacher-dtype bf16, train-precision "
                "bf16-mixed",
                self.server.name,
                self.server.memory_bytes / GB,
                self.server_memory_bytes.min() / GB,
            )
            self.server_fits = np.ones_like(self.server_fits)

    def cut_fits(self, profile: DeviceProfile) -> np.ndarray:
        """(C,) whether each cut is allowed and fits ``profile``'s memory and the server's."""
        if not self.memory_limits:
            return self.cut_allowed.copy()
        device = fits(self.device_memory_bytes, profile.memory_bytes)
        return device & self.server_fits & self.cut_allowed

    def why_not(self, profile: DeviceProfile, cut_layer: int) -> str:
        """Why ``cut_layer`` does not fit (memory per side), or "" when it does."""
        if not self.memory_limits:
            return ""
        i = cut_layer - 1
        need_d, need_s = self.device_memory_bytes[i], self.server_memory_bytes[i]
        reasons = []
        if not fits(need_d, profile.memory_bytes):
            reasons.append(
                f"the device side needs {need_d / GB:.1f} GB but {profile.name} "
                f"({profile.hardware}, {profile.memory_bytes / GB:.0f} GB) has "
                f"{MEMORY_HEADROOM * profile.memory_bytes / GB:.1f} GB usable"
            )
        if not self.server_fits[i]:
            reasons.append(
                f"the server side needs {need_s / GB:.1f} GB but {self.server.name} "
                f"has {MEMORY_HEADROOM * self.server.memory_bytes / GB:.1f} GB usable"
            )
        return "; ".join(reasons)

    def _links(
        self, devices: Sequence[DeviceState]
    ) -> tuple[DeviceArrays, np.ndarray, np.ndarray]:
        up, down = link_rates(devices, type(self).__name__)
        profiles = [self.fleet.profile(d.profile_name) for d in devices]
        return DeviceArrays.of(profiles), up, down

    def _fixed_cut(
        self, device: DeviceState, cut_layer: int, clock_hz: float | None
    ) -> Plan:
        """Plan ``cut_layer`` with its modelled cost at ``clock_hz`` (None: the server's top clock)."""
        arrays, up, down = self._links([device])
        clock = self.server.clock_hz if clock_hz is None else clock_hz
        cost = self.cost.evaluate(arrays, up, down, [[[clock]]], [[[cut_layer - 1]]])
        modelled = cost.record((0, 0, 0))
        bound = self.delay_bound_s
        return Plan(
            cut_layer, clock_hz, bound is None or modelled["delay_s"] <= bound, modelled
        )


class Fixed(ModelledPlanner):
    """The configured ``cut-layer`` every round; the server clock is left alone."""

    def __init__(
        self,
        workload: Workload,
        cut_layer: int = 1,
        delay_bound_s: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(workload, cut_layer, delay_bound_s, **options)
        if not 1 <= cut_layer <= workload.num_student_layers - 1:
            raise ConfigError(
                f"cut-layer must be in 1..{workload.num_student_layers - 1}, got {cut_layer}"
            )
        if cut_layer < self.min_cut_layer:
            raise ConfigError(
                f"cut-layer must be > device-private-layers = {self.min_cut_layer - 1}, "
                f"got {cut_layer}"
            )

    def plan(self, device: DeviceState, server_round: int) -> Plan:
        """Return the fixed cut (modelled when the device's link is known)."""
        profile = self.fleet.profiles.get(device.profile_name)
        why = self.why_not(profile, self.cut_layer) if profile else ""
        if why:
            raise ConfigError(f"cut-layer {self.cut_layer} does not fit: {why}")
        if device.uplink_bps is None or device.downlink_bps is None:
            return Plan(cut_layer=self.cut_layer)
        return self._fixed_cut(device, self.cut_layer, None)


class ServerOnly(ModelledPlanner):
    """The paper's server-only baseline: the device trains student layer 1 (cut 1), or
    the shallowest cut above the device's private layers (``min_cut_layer``)."""

    def plan(self, device: DeviceState, server_round: int) -> Plan:
        """The shallowest allowed cut, server clock left alone (modelled at its top clock)."""
        return self._fixed_cut(device, self.min_cut_layer, None)


class DeviceOnly(ModelledPlanner):
    """The paper's device-only baseline: the device trains student layers 1..L-1 (cut L-1)."""

    def plan(self, device: DeviceState, server_round: int) -> Plan:
        """Cut L-1, server clock left alone (modelled at its top clock)."""
        return self._fixed_cut(device, self.workload.num_student_layers - 1, None)


class EnergyOptimal(ModelledPlanner):
    """Minimum round energy over (cut layer, server clock step) subject to the delay bound.

    Exact: for each cut the server's energy ``(kappa f^3 + P_s) W / f`` is convex in ``f``
    and the delay falls with ``f``, so the best feasible step is the first one at or above
    ``max(f_required, f*)`` (``f* = (P_s / 2 kappa)^(1/3)``) or the one just below ``f*``;
    those candidates (plus the next step up, against rounding at the bound) are costed with
    the same model as an exhaustive search. When no plan meets the bound, the least-delay
    plan (top clock) is returned with ``feasible=False`` and a warning.
    """

    def plan(self, device: DeviceState, server_round: int) -> Plan:
        """Return the energy-optimal plan for ``device``."""
        return self.plan_many([device], server_round)[0]

    def plan_many(
        self,
        devices: Sequence[DeviceState],
        server_round: int,
        warn: bool = True,
        delay_bounds_s: Sequence[float] | None = None,
    ) -> list[Plan]:
        """Plan every device of ``devices`` in one vectorised pass.

        ``warn`` logs infeasible plans; ``delay_bounds_s`` (one per device) overrides the
        planner's bound.
        """
        arrays, up, down = self._links(devices)
        steps = self.clock_steps_hz
        cost = self.cost
        # base[device, cut, TOP]: every cut at the top clock, for the clock-independent parts
        base = cost.evaluate(arrays, up, down, steps[-1:])
        fixed_s = (base.delay_s - base.server_compute_s)[..., _TOP]  # (D, C)
        if delay_bounds_s is None:
            delay_bounds_s = [
                np.inf if self.delay_bound_s is None else self.delay_bound_s
            ] * len(devices)
        bound = np.asarray(delay_bounds_s, dtype=float)[:, None]  # (D, 1)
        slack_s = bound - fixed_s
        with np.errstate(divide="ignore", invalid="ignore"):
            # (D, C)
            f_req = np.where(slack_s > 0, cost.server_cycles / slack_s, np.inf)
        target = np.maximum(f_req, self.server.energy_optimal_clock_hz)
        hi = np.searchsorted(steps, target)  # first step >= target; K when none
        # cand[device, cut, k]: the clock step of candidate k (below, at, above target)
        cand = np.stack([hi - 1, hi, hi + 1], axis=-1)  # (D, C, 3)
        valid = (cand >= 0) & (cand < len(steps))
        grid = cost.evaluate(
            arrays,
            up,
            down,
            steps[np.clip(cand, 0, len(steps) - 1)],
            np.arange(cost.num_cuts)[None, :, None],
        )
        profiles = [self.fleet.profile(d.profile_name) for d in devices]
        fit = np.stack([self.cut_fits(p) for p in profiles])  # (D, C)
        ok = valid & (grid.delay_s <= bound[..., None]) & fit[..., None]
        # (D, C*3)
        energy = np.where(ok, grid.energy_j, np.inf).reshape(len(devices), -1)
        best = energy.argmin(axis=1)
        plans = []
        for d, state in enumerate(devices):
            if np.isfinite(energy[d, best[d]]):
                cut_index, candidate = np.unravel_index(best[d], cand.shape[1:])
                plans.append(
                    self._to_plan(grid, (d, int(cut_index), int(candidate)), True)
                )
                continue
            # The top clock is the fastest: the least-delay plan is the best cut there,
            # among the cuts that fit (the least memory-hungry one if none does).
            if fit[d].any():
                cut = int(np.argmin(np.where(fit[d], base.delay_s[d, :, _TOP], np.inf)))
            else:
                allowed_memory = np.where(
                    self.cut_allowed, self.device_memory_bytes, np.inf
                )
                cut = int(np.argmin(allowed_memory))
                logger.warning(
                    "round %s: no cut fits node %s: %s",
                    server_round,
                    state.node_id,
                    self.why_not(profiles[d], cut + 1),
                )
            if warn:
                logger.warning(
                    "round %s: no plan for node %s meets the delay bound %.3g s; least "
                    "delay %.3g s at cut %s",
                    server_round,
                    state.node_id,
                    bound[d, 0],
                    base.delay_s[d, cut, _TOP],
                    cut + 1,
                )
            plans.append(self._to_plan(base, (d, cut, _TOP), False))
        return plans

    def _to_plan(
        self, cost: RoundCost, index: tuple[int, int, int], feasible: bool
    ) -> Plan:
        """The plan at ``cost[device, cut_index, clock]``."""
        modelled = cost.record(index)
        _, cut_index, _ = index
        return Plan(
            int(self.cost.cuts[cut_index]),
            modelled["server_clock_hz"],
            feasible,
            modelled,
        )


PLANNERS: dict[str, type[Planner]] = {
    "device-only": DeviceOnly,
    "energy-optimal": EnergyOptimal,
    "fixed": Fixed,
    "server-only": ServerOnly,
}


def load_planner(
    spec: str,
    workload: Workload,
    cut_layer: int = 1,
    delay_bound_s: float | None = None,
    **options: Any,
) -> Planner:
    """Build a planner from a registered name or a dotted path.

    ``options`` (e.g. ``fleet``, ``min_cut_layer``) go only to constructors that name
    them or take ``**options``: a plug-in written against :class:`Planner`'s interface
    gets just its three arguments (the run then checks each plan's cut itself).
    """
    return load_component(
        spec,
        Planner,
        PLANNERS,
        workload,
        cut_layer=cut_layer,
        delay_bound_s=delay_bound_s,
        optional=options,
    )

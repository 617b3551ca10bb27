"""Cut-layer and server-clock planners."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from splitkd_flwr.errors import ConfigError
from splitkd_flwr.strategies.components import load_component
from splitkd_flwr.strategies.types import DeviceState, Workload


@dataclass(frozen=True)
class Plan:
    """A round's decision: where to cut the student and how fast to clock the server GPU."""

    cut_layer: int
    server_clock_hz: float | None = None  # None: leave the clock alone
    feasible: bool = True  # False: no plan met the delay bound; this one has the least delay
    modelled: dict[str, float] = field(default_factory=dict)  # e.g. delay_s, energy_j per part


class Planner(ABC):
    """Choose the cut layer (and server clock) for the selected device.

    Subclass it and name your class in the run config
    (``planner = "mypkg.mymod:MyPlanner"``); it is built as
    ``MyPlanner(workload, cut_layer=..., delay_bound_s=...)``.
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


class Fixed(Planner):
    """The configured ``cut-layer`` every round; the server clock is left alone."""

    def __init__(
        self, workload: Workload, cut_layer: int = 1, delay_bound_s: float | None = None
    ) -> None:
        super().__init__(workload, cut_layer, delay_bound_s)
        if not 1 <= cut_layer <= workload.num_student_layers - 1:
            raise ConfigError(
                f"cut-layer must be in 1..{workload.num_student_layers - 1}, got {cut_layer}"
            )

    def plan(self, device: DeviceState, server_round: int) -> Plan:
        """Return the fixed cut."""
        return Plan(cut_layer=self.cut_layer)


PLANNERS: dict[str, type[Planner]] = {"fixed": Fixed}


def load_planner(
    spec: str, workload: Workload, cut_layer: int = 1, delay_bound_s: float | None = None
) -> Planner:
    """Build a planner from a registered name or a dotted path."""
    return load_component(
        spec, Planner, PLANNERS, workload, cut_layer=cut_layer, delay_bound_s=delay_bound_s
    )

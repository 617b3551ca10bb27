"""Device selectors: which ONE device trains with the server this round."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from splitkd_flwr.strategies.components import load_component
from splitkd_flwr.strategies.types import DeviceState


class Selector(ABC):
    """Pick one device per round.

    Subclass it and name your class in the run config
    (``selector = "mypkg.mymod:MySelector"``); it is built as ``MySelector(seed=...)``.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @abstractmethod
    def select(self, devices: Sequence[DeviceState], server_round: int) -> DeviceState:
        """Return the device (one of ``devices``, never empty) that trains in ``server_round``."""


class RoundRobin(Selector):
    """Devices in ascending partition id, one per round, wrapping around."""

    def select(self, devices: Sequence[DeviceState], server_round: int) -> DeviceState:
        """Return device ``(server_round - 1) mod n`` by partition id."""
        ordered = sorted(devices, key=lambda d: (d.partition_id, d.node_id))
        return ordered[(server_round - 1) % len(ordered)]


SELECTORS: dict[str, type[Selector]] = {"round-robin": RoundRobin}


def load_selector(spec: str, seed: int = 0) -> Selector:
    """Build a selector from a registered name or a dotted path."""
    return load_component(spec, Selector, SELECTORS, seed=seed)

"""Device selectors: which ONE device trains with the server this round."""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from splitkd_flwr.core.components import load_component
from splitkd_flwr.core.types import DeviceState

logger = logging.getLogger(__name__)


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


def _by_id(device: DeviceState) -> tuple[int, int]:
    return (device.partition_id, device.node_id)


class RoundRobin(Selector):
    """Devices in ascending partition id, one per round, wrapping around."""

    def select(self, devices: Sequence[DeviceState], server_round: int) -> DeviceState:
        """Return device ``(server_round - 1) mod n`` by partition id."""
        ordered = sorted(devices, key=_by_id)
        return ordered[(server_round - 1) % len(ordered)]


class Random(Selector):
    """A uniformly random device; the draw depends only on (seed, round), so reruns repeat it."""

    def select(self, devices: Sequence[DeviceState], server_round: int) -> DeviceState:
        """Return a seeded random device."""
        ordered = sorted(devices, key=_by_id)
        rng = np.random.default_rng([self.seed, server_round])
        return ordered[int(rng.integers(len(ordered)))]


class BestChannel(Selector):
    """The device with the highest uplink rate (the smashed data and weights go up);
    ties go to the device that has trained fewest rounds, then the lowest partition id."""

    def select(self, devices: Sequence[DeviceState], server_round: int) -> DeviceState:
        """Return the device with the best uplink."""

        def key(d: DeviceState) -> tuple[float, int, int, int]:
            rate = -math.inf if d.uplink_bps is None else d.uplink_bps
            return (-rate, d.rounds_trained, *_by_id(d))

        return min(devices, key=key)


class EnergyAware(Selector):
    """The device with the largest share of its energy budget left
    (``1 - energy_used_j / energy_budget_j``; an unlimited budget counts as all left).

    Ties (e.g. no budgets at all) go to the device that has trained fewest rounds, then to
    the one that has spent least. Devices with nothing left are skipped (logged once per
    device); if every device is spent, the least overdrawn one is returned with a warning.
    Budgets come from the fleet file (``energy_budgets_j``) or a node's ``energy-budget-j``.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._reported_spent: set[int] = set()
        self._warned_all_spent = False

    def select(self, devices: Sequence[DeviceState], server_round: int) -> DeviceState:
        """Return the device with the most budget left."""

        def left(d: DeviceState) -> float:
            if d.energy_budget_j is None:
                return 1.0
            return (
                1.0 - d.energy_used_j / d.energy_budget_j
                if d.energy_budget_j > 0
                else -math.inf
            )

        for d in devices:
            if left(d) <= 0 and d.node_id not in self._reported_spent:
                self._reported_spent.add(d.node_id)
                logger.info(
                    "round %s: node %s (partition %s) has spent its energy budget "
                    "(%.4g of %.4g J); skipped while others have budget left",
                    server_round,
                    d.node_id,
                    d.partition_id,
                    d.energy_used_j,
                    d.energy_budget_j,
                )
        best = min(
            devices,
            key=lambda d: (-left(d), d.rounds_trained, d.energy_used_j, *_by_id(d)),
        )
        if left(best) <= 0:
            # Once per run: from then on every round would say the same.
            logger.log(
                logging.DEBUG if self._warned_all_spent else logging.WARNING,
                "round %s: every device has spent its energy budget; selecting the "
                "least overdrawn (node %s)",
                server_round,
                best.node_id,
            )
            self._warned_all_spent = True
        return best


SELECTORS: dict[str, type[Selector]] = {
    "best-channel": BestChannel,
    "energy-aware": EnergyAware,
    "random": Random,
    "round-robin": RoundRobin,
}


def load_selector(spec: str, seed: int = 0) -> Selector:
    """Build a selector from a registered name or a dotted path."""
    return load_component(spec, Selector, SELECTORS, seed=seed)

"""The modelled cluster round: K devices share the carrier, compute in parallel, queue at the server.

One cluster round, all K devices at the same cut ``c`` and the server at clock ``f``
(docs/case-study.md, "Clustered rounds"):

1. Every device downloads its device-side weights on its share of the carrier (``1/K`` of the
   PRBs); the K downloads run in parallel.
2. Each device then runs ``B`` local steps on its own: its forward half (``1/3`` of its
   per-batch FLOPs), its smashed data up, the server's service of that frame, the gradient
   down and its backward half (``2/3``); its next forward starts right after. The server is
   one FIFO queue of ``s`` seconds per frame: it serves frames as they arrive, a frame that
   arrives while another is in service waits (frames of different devices pipeline; several
   waiting frames form one batched step of the same total FLOPs, so the same time). Ties go
   to the device listed first. No barrier between local steps: a fast device may be several
   steps ahead of a slow one and finishes early.
3. Each device uploads its weights when its last step is done; the round ends when the last
   upload does.

This is a deterministic closed queue; :func:`pipelined_round_s` runs it exactly, vectorised
over every (cut, clock) at once.
With ``K = 1`` this is exactly :class:`~splitkd_flwr.simulation.cost.CostModel`'s sequential
round (``device + uplink + server + downlink``). Energy adds over devices: each device's
compute and transmit energy, the server's busy time ``K B s`` at ``(kappa f^3 + P_s)``, and the
base station's transmit energy ``(P_bs / K) x`` each device's downlink air time (its share of
the power over its share of the band). Idle waiting costs nothing, as in the sequential model.

Sharing the carrier: a device given ``share = 1/K`` of the PRBs transmits its full power over
them (uplink SNR rises by ``-10 log10 share``), and may use fewer (power-limited, as
:meth:`LinkConfig.link_rate`); the base station splits its power evenly, so the downlink SNR
per PRB is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState
from splitkd_flwr.simulation.channel import LinkConfig
from splitkd_flwr.simulation.cost import (
    TRAIN_FACTOR,
    CostModel,
    DeviceArrays,
    compute_delay_s,
    compute_energy_j,
    link_rates,
)
from splitkd_flwr.simulation.devices import Fleet
from splitkd_flwr.simulation.nr_tables import cqi_from_sinr

# Share of a device's per-batch FLOPs in its forward half (forward 1, backward 2 of TRAIN_FACTOR)
FORWARD_SHARE = 1.0 / TRAIN_FACTOR


def shared_rate_bps(
    link: LinkConfig, snr_db: np.ndarray, direction: str, share: float
) -> np.ndarray:
    """Rate of a device given ``share`` of the carrier's PRBs (full-band ``snr_db``).

    Uplink: the device's full power over its share, or over fewer PRBs (the halvings of
    ``link.link_rate`` below the share) when that is faster; downlink: the base station's
    power split in the same share. The share itself (e.g. 88 of 264 PRBs at K = 3) is an
    allocation the whole-carrier halvings lack, so a power-limited device may get slightly
    more than its whole-carrier rate.
    """
    if not 0 < share <= 1:
        raise ConfigError(f"carrier share must be in (0, 1], got {share}")
    full = link.rates_bps(direction)
    fractions = [share]
    if link.adaptive_prb:
        fractions += [
            (link.num_prb >> k) / link.num_prb
            for k in range(link.num_prb.bit_length())
            if 0 < (link.num_prb >> k) / link.num_prb < share
        ]
    # downlink: power share == band share, so the SNR per PRB stays the full-band one
    power_db = 10 * math.log10(share) if direction == "DL" else 0.0
    snr = np.asarray(snr_db, dtype=float)
    best = np.zeros(snr.shape)
    for frac in fractions:
        cqi = cqi_from_sinr(snr + power_db - 10 * math.log10(frac), link.thresholds_db)
        best = np.maximum(best, full[cqi] * frac)
    return best


@dataclass(frozen=True)
class ClusterCost:
    """Modelled delay and energy of one cluster round over every (cut, clock): arrays (C, F)."""

    delay_s: np.ndarray
    energy_j: np.ndarray
    server_busy_s: np.ndarray  # K B s
    device_j: np.ndarray  # compute + transmit, all devices
    server_j: np.ndarray
    downlink_j: np.ndarray  # base station
    cuts: np.ndarray  # (C,)
    clocks_hz: np.ndarray  # (F,)

    def record(self, cut_index: int, clock_index: int) -> dict[str, float]:
        """The figures at one (cut, clock) as a flat dict (keys carry units)."""
        out = {
            name: float(
                np.broadcast_to(getattr(self, name), self.delay_s.shape)[
                    cut_index, clock_index
                ]
            )
            for name in (
                "delay_s",
                "energy_j",
                "server_busy_s",
                "device_j",
                "server_j",
                "downlink_j",
            )
        }
        out["server_clock_hz"] = float(self.clocks_hz[clock_index])
        return out


class ClusterCostModel:
    """Cost of a cluster round (module docstring) on top of a sequential :class:`CostModel`.

    Parameters
    ----------
    cost : CostModel
        Per-cut FLOPs and bytes of one device's round.
    fleet : Fleet
        Device profiles and the server (its ``tx_power_w`` is the base station's).
    link : LinkConfig
        The carrier the cluster shares (rates at a share, from each device's SNR).
    """

    def __init__(self, cost: CostModel, fleet: Fleet, link: LinkConfig) -> None:
        self.cost, self.fleet, self.link = cost, fleet, link
        self.server = fleet.server_profile
        batches = cost.workload.batches_per_round
        param = cost.param_bytes  # (C,) each way per round
        self.batches = batches
        # (C,) per local step of one device
        self.frame_up_bytes = (cost.uplink_bytes - param) / batches
        self.frame_down_bytes = (cost.downlink_bytes - param) / batches
        self.param_bytes = param
        self.step_flops = cost.device_flops / batches
        self.frame_cycles = cost.server_cycles / batches

    def links(
        self, devices: Sequence[DeviceState], share: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(K,) uplink and downlink rates of ``devices`` at ``share`` of the carrier.

        At ``share == 1`` the devices' own rates are used unchanged (the sequential round).
        """
        up, down = link_rates(devices, "clustered planning")
        if share >= 1:
            return up, down
        if any(d.snr_db is None for d in devices):
            raise ConfigError("sharing the carrier needs each device's uplink SNR")
        up_snr = np.array([d.snr_db for d in devices], dtype=float)
        ue_w = np.array(
            [self.fleet.profile(d.profile_name).tx_power_w for d in devices]
        )
        # same path loss both ways: the downlink SNR differs by the transmit powers
        down_snr = up_snr + 10 * np.log10(self.server.tx_power_w / ue_w)
        return (
            shared_rate_bps(self.link, up_snr, "UL", share),
            shared_rate_bps(self.link, down_snr, "DL", share),
        )

    def evaluate(
        self, devices: Sequence[DeviceState], clocks_hz: Sequence[float] | None = None
    ) -> ClusterCost:
        """Cost of a round of cluster ``devices`` (in FIFO tie order) at every cut and clock."""
        k = len(devices)
        if k < 1:
            raise ConfigError("a cluster needs at least one device")
        share = 1.0 / k
        up_bps, down_bps = self.links(devices, share)
        arrays = DeviceArrays.of([self.fleet.profile(d.profile_name) for d in devices])
        clocks = np.asarray(
            self.server.clock_steps_hz if clocks_hz is None else clocks_hz, dtype=float
        )
        col = (slice(None), None)  # (K,) -> (K, 1)
        with np.errstate(divide="ignore"):
            up_s = 8.0 * self.frame_up_bytes[None, :] / up_bps[col]  # (K, C)
            down_s = 8.0 * self.frame_down_bytes[None, :] / down_bps[col]
            w_down = 8.0 * self.param_bytes[None, :] / down_bps[col]
            w_up = 8.0 * self.param_bytes[None, :] / up_bps[col]
        comp_s = compute_delay_s(
            self.step_flops[None, :],
            arrays.clock_hz[col],
            arrays.cores[col],
            arrays.utilisation[col],
        )  # (K, C)
        arrive = FORWARD_SHARE * comp_s + up_s  # (K, C)
        tail = down_s + (1 - FORWARD_SHARE) * comp_s
        frame_s = self.frame_cycles[:, None] / clocks[None, :]  # (C, F)
        b = self.batches
        delay_s = pipelined_round_s(w_down + arrive, arrive, tail, w_up, frame_s, b)
        server_busy = k * b * frame_s
        device_j = (
            compute_energy_j(
                b * comp_s,
                arrays.clock_hz[col],
                arrays.kappa[col],
                arrays.static_power_w[col],
            )
            + arrays.tx_power_w[col] * (b * up_s + w_up)
        ).sum(axis=0)[:, None]  # (C, 1)
        server_j = compute_energy_j(
            server_busy, clocks[None, :], self.server.kappa, self.server.static_power_w
        )
        # the base station gives each device `share` of its power over that device's air time
        downlink_j = (
            (self.server.tx_power_w * share * (b * down_s + w_down)).sum(axis=0)
        )[:, None]
        return ClusterCost(
            delay_s=delay_s,
            energy_j=device_j + server_j + downlink_j,
            server_busy_s=server_busy,
            device_j=device_j,
            server_j=server_j,
            downlink_j=downlink_j,
            cuts=self.cost.cuts,
            clocks_hz=clocks,
        )


def pipelined_round_s(
    first_s: np.ndarray,
    arrive_s: np.ndarray,
    tail_s: np.ndarray,
    finish_s: np.ndarray,
    frame_s: np.ndarray,
    steps: int,
) -> np.ndarray:
    """Delay of ``steps`` local steps of K devices through one FIFO server, per (cut, clock).

    Parameters
    ----------
    first_s : (K, C)
        When device k's first frame reaches the server (weights down + forward + up).
    arrive_s : (K, C)
        From a device's gradient step to its next frame at the server (forward + up).
    tail_s : (K, C)
        From the end of a frame's service to the device's step (gradient down + backward).
    finish_s : (K, C)
        After its last step, until the device is done (weights up).
    frame_s : (C, F)
        Server time per frame.

    The server always serves the pending frame that arrived first (each device has at most
    one frame pending), so ``K * steps`` iterations of "serve the earliest arrival" replay
    the queue exactly for every grid point at once. Returns (C, F): when the last device is done.
    """
    k = first_s.shape[0]
    shape = (k, *frame_s.shape)
    arrival = np.broadcast_to(first_s[..., None], shape).copy()  # (K, C, F)
    tail = np.broadcast_to(tail_s[..., None], shape)
    again = np.broadcast_to((tail_s + arrive_s)[..., None], shape)
    left = np.full(shape, steps)
    free = np.zeros(frame_s.shape)
    end = np.zeros(frame_s.shape)
    grid = np.indices(frame_s.shape)
    for _ in range(k * steps):
        # finished devices never arrive again
        j = np.argmin(np.where(left > 0, arrival, np.inf), axis=0)  # (C, F)
        at = (j, *grid)
        done = np.maximum(free, arrival[at]) + frame_s
        free = done
        left[at] -= 1
        last = left[at] == 0
        end = np.where(
            last, np.maximum(end, done + tail[at] + finish_s[j, grid[0]]), end
        )
        arrival[at] = done + again[at]
    return end

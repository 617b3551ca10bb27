"""FLOPs and bytes of one split-KD round per cut layer, and from them its delay and energy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState, Workload
from splitkd_flwr.simulation.devices import FLOPS_PER_CYCLE_PER_CORE, DeviceProfile

# Public Hugging Face configs of the modelled pair. The paper's text says "teacher 64 blocks,
# student 12"; the released models have 32 and 16, and those are what we model by default.
LLAMA_3_2_1B: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "intermediate_size": 8192,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}
LLAMA_3_1_8B: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}
TRAIN_FACTOR = 3.0  # forward + backward (input and weight gradients = 2x forward)
# Integer tensors travel as they are, whatever the wire dtype: int64 (8 B) per element.
LABEL_BYTES_PER_TOKEN = 8  # seed mode: the labels go up with the smashed data
MASK_BYTES_PER_TOKEN = 8  # both modes: the attention mask goes up with the smashed data
ID_BYTES = 8  # u-shape with top-k: each of the teacher's k token ids goes down


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder that decide its FLOPs and bytes."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Read an HF-style config dict (``model_type`` llama, mistral, qwen2, ...)."""
        try:
            hidden, heads = (
                int(config["hidden_size"]),
                int(config["num_attention_heads"]),
            )
            return cls(
                hidden=hidden,
                layers=int(config["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                intermediate=int(config["intermediate_size"]),
                vocab=int(config["vocab_size"]),
            )
        except KeyError as err:
            raise ConfigError(
                f"model config lacks {err.args[0]!r}: need a Llama-style config"
            ) from None

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer's matrix multiplies (norms are negligible)."""
        d, attn, kv = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        )
        return 2 * d * attn + 2 * d * kv + 3 * d * self.intermediate

    def layer_forward_flops(self, seq_len: int, attention_factor: float = 1.0) -> float:
        """Forward FLOPs of one layer for one sequence: ``2 P s + 4 s^2 n_h d_h``.

        ``attention_factor`` 0.5 models kernels that skip the causal mask's upper half.
        """
        attention = 4.0 * seq_len**2 * self.heads * self.head_dim * attention_factor
        return 2.0 * self.layer_params * seq_len + attention

    def head_forward_flops(self, seq_len: int) -> float:
        """Forward FLOPs of the LM head for one sequence."""
        return 2.0 * self.hidden * self.vocab * seq_len


def frame_bytes_per_token(
    workload: Workload, student: ModelShape, teacher: ModelShape
) -> tuple[float, float]:
    """Data-plane bytes per token of one mini-batch, (up, down), in the workload's split mode.

    Floats travel in the wire dtype (``w`` bytes), integers as int64. ``seed``: up the
    teacher embeddings, the student hidden state at the cut, the mask and the labels;
    down the gradient at the cut. ``u-shape`` (split_kd/ushape_plane.py): up the same
    without the labels, then the gradient at the top; down the student hidden state after
    the server's blocks and the teacher's soft labels (V floats, or with top-k: k
    log-probs, k ids and the tail mass), then the gradient at the cut.
    """
    w = workload.wire_bytes_per_element
    smashed = (student.hidden + teacher.hidden) * w + MASK_BYTES_PER_TOKEN
    # the gradient at the cut (and in u-shape the one at the top)
    grad = student.hidden * w
    if not workload.ushape:
        return smashed + LABEL_BYTES_PER_TOKEN, grad
    k = workload.teacher_top_k
    if k > teacher.vocab:
        raise ConfigError(
            f"teacher top-k {k} exceeds the teacher's vocabulary ({teacher.vocab})"
        )
    soft = teacher.vocab * w if k == 0 else k * w + k * ID_BYTES + w
    return smashed + grad, student.hidden * w + soft + grad


@dataclass(frozen=True)
class RoundCost:
    """Modelled delay (s), energy (J) and bytes of a round; every field broadcasts together."""

    device_compute_s: np.ndarray
    # every batch's up frames (frame_bytes_per_token), device-side weights at the end
    uplink_s: np.ndarray
    server_compute_s: np.ndarray
    # every batch's down frames, device-side weights at the start
    downlink_s: np.ndarray
    device_compute_j: np.ndarray
    device_tx_j: np.ndarray
    server_compute_j: np.ndarray
    downlink_j: np.ndarray  # base-station transmit energy
    uplink_bytes: np.ndarray
    downlink_bytes: np.ndarray
    server_clock_hz: np.ndarray

    @property
    def delay_s(self) -> np.ndarray:
        """Round delay: device, uplink, server and downlink take turns (no overlap)."""
        return (
            self.device_compute_s
            + self.uplink_s
            + self.server_compute_s
            + self.downlink_s
        )

    @property
    def energy_j(self) -> np.ndarray:
        """Round energy of the device, the edge server and the base station's downlink."""
        return (
            self.device_compute_j
            + self.device_tx_j
            + self.server_compute_j
            + self.downlink_j
        )

    def record(self, index: tuple[int, ...] | int = ()) -> dict[str, float]:
        """The figures at ``index`` as a flat dict (keys carry units), e.g. for Plan.modelled."""
        index = (index,) if isinstance(index, int) else index

        def at(
            array: np.ndarray,
        ) -> float:  # index into a broadcast axis of length 1 at 0
            arr = np.asarray(array)
            return float(
                arr[tuple(i if n > 1 else 0 for i, n in zip(index, arr.shape))]
                if index
                else arr
            )

        out = {f.name: at(getattr(self, f.name)) for f in fields(self)}
        # the same sums, in the same order, as the delay_s / energy_j properties
        out["delay_s"] = sum(
            out[k]
            for k in ("device_compute_s", "uplink_s", "server_compute_s", "downlink_s")
        )
        out["energy_j"] = sum(
            out[k]
            for k in (
                "device_compute_j",
                "device_tx_j",
                "server_compute_j",
                "downlink_j",
            )
        )
        return out


def compute_delay_s(
    flops: Any, clock_hz: Any, cores: Any, utilisation: Any
) -> np.ndarray:
    """Seconds to do ``flops`` at ``clock_hz`` on ``cores`` at ``utilisation``."""
    return np.asarray(flops) / (
        clock_hz * cores * FLOPS_PER_CYCLE_PER_CORE * utilisation
    )


def compute_energy_j(
    delay_s: Any, clock_hz: Any, kappa: Any, static_power_w: Any
) -> np.ndarray:
    """Energy of computing for ``delay_s`` at ``clock_hz``: ``(kappa f^3 + P_s) T``."""
    return (kappa * np.asarray(clock_hz, dtype=float) ** 3 + static_power_w) * delay_s


@dataclass(frozen=True)
class DeviceArrays:
    """Profiles of D devices as arrays of shape (D,), for vectorised costing."""

    clock_hz: np.ndarray
    cores: np.ndarray
    kappa: np.ndarray
    static_power_w: np.ndarray
    tx_power_w: np.ndarray
    utilisation: np.ndarray

    @classmethod
    def of(cls, profiles: list[DeviceProfile]) -> DeviceArrays:
        """Stack ``profiles`` field by field."""
        return cls(
            **{
                f.name: np.array([getattr(p, f.name) for p in profiles], dtype=float)
                for f in fields(cls)
            }
        )


class CostModel:
    """Per-cut FLOPs and bytes of a round, and its delay and energy for any device, link and clock.

    Parameters
    ----------
    workload : Workload
        Batch, sequence length, batches per round, wire dtypes, the modelled configs
        (empty configs: Llama-3.2-1B student with ``num_student_layers`` layers, Llama-3.1-8B
        teacher) and the split mode (``u-shape``: the device also trains the final norm and
        LM head, and the link carries its extra exchange).
    server : DeviceProfile
        The edge server; its ``tx_power_w`` is the base station's downlink power.
    attention_factor : float
        1.0 counts the full ``s x s`` attention products (dense kernels; torch's FLOP counter),
        0.5 models kernels that skip the masked half.
    """

    def __init__(
        self, workload: Workload, server: DeviceProfile, attention_factor: float = 1.0
    ) -> None:
        self.workload, self.server = workload, server
        self.student = ModelShape.from_config(
            workload.student_config
            or {**LLAMA_3_2_1B, "num_hidden_layers": workload.num_student_layers}
        )
        self.teacher = ModelShape.from_config(workload.teacher_config or LLAMA_3_1_8B)
        if self.student.layers != workload.num_student_layers:
            raise ConfigError(
                f"student config has {self.student.layers} layers, workload says {workload.num_student_layers}"
            )
        if self.student.layers < 2:
            raise ConfigError(
                f"a split needs a student with >= 2 layers, got {self.student.layers}"
            )
        w, s = workload, workload.seq_len
        sequences = w.batch_size * w.batches_per_round
        self.cuts = np.arange(1, self.student.layers)  # device holds layers [0, cut)
        layer = TRAIN_FACTOR * self.student.layer_forward_flops(s, attention_factor)
        teacher = self.teacher.layers * self.teacher.layer_forward_flops(
            s, attention_factor
        )
        teacher += self.teacher.head_forward_flops(s)  # frozen teacher: forward only
        # The student's final norm + LM head, trained where the loss is: the server in
        # seed mode, the device in u-shape (norms ~0 FLOPs).
        head = TRAIN_FACTOR * self.student.head_forward_flops(s)
        device_head, server_head = (head, 0.0) if w.ushape else (0.0, head)
        # (C,) per-round FLOPs; the embedding lookups (teacher's and student's) are gathers, ~0 FLOPs
        self.device_flops = sequences * (layer * self.cuts + device_head)
        self.server_flops = sequences * (
            layer * (self.student.layers - self.cuts) + server_head + teacher
        )
        up_per_token, down_per_token = frame_bytes_per_token(
            w, self.student, self.teacher
        )
        # Data-plane bytes of one mini-batch each way (frame headers not counted)
        self.batch_up_bytes = w.batch_size * s * up_per_token
        self.batch_down_bytes = w.batch_size * s * down_per_token
        table = self.student.vocab * self.student.hidden
        # The device trains (and so receives and returns) its embeddings, its blocks and
        # in u-shape the LM head
        device_params = table * (2 if w.ushape else 1) + (
            self.student.layer_params * self.cuts
        )
        # (C,) each way per round
        self.param_bytes = device_params * w.param_bytes_per_element
        self.uplink_bytes = w.batches_per_round * self.batch_up_bytes + self.param_bytes
        self.downlink_bytes = (
            w.batches_per_round * self.batch_down_bytes + self.param_bytes
        )
        # (C,) server cycles: server_compute_s = server_cycles / f
        self.server_cycles = self.server_flops / (
            server.cores * FLOPS_PER_CYCLE_PER_CORE * server.utilisation
        )

    @property
    def num_cuts(self) -> int:
        """Cut layers 1 .. L-1."""
        return len(self.cuts)

    def evaluate(
        self,
        devices: DeviceArrays,
        uplink_bps: Any,
        downlink_bps: Any,
        server_clock_hz: Any,
        cut_index: Any = None,
    ) -> RoundCost:
        """Cost of every (device, cut, clock) in one call.

        Parameters
        ----------
        devices : DeviceArrays
            D devices; ``uplink_bps`` and ``downlink_bps`` have shape (D,).
        server_clock_hz : array_like
            Shape (K,) for a (D, C, K) grid over all cuts, or anything broadcastable to
            (D, C, K) together with ``cut_index``.
        cut_index : array_like, optional
            Indices into ``self.cuts`` (cut - 1); default all cuts as axis 1.
        """
        clock = np.asarray(server_clock_hz, dtype=float)
        if clock.ndim == 1:
            clock = clock[None, None, :]  # (1, 1, K)
        cut_idx = (
            np.arange(self.num_cuts)[None, :, None]
            if cut_index is None
            else np.asarray(cut_index)
        )
        # (D, 1, 1)
        dev = {f.name: getattr(devices, f.name)[:, None, None] for f in fields(devices)}
        up_bps = np.asarray(uplink_bps, dtype=float)[:, None, None]
        down_bps = np.asarray(downlink_bps, dtype=float)[:, None, None]
        up_bytes, down_bytes = self.uplink_bytes[cut_idx], self.downlink_bytes[cut_idx]
        with np.errstate(
            divide="ignore"
        ):  # a zero rate (out of coverage) costs infinitely long
            uplink_s = 8.0 * up_bytes / up_bps
            downlink_s = 8.0 * down_bytes / down_bps
        dev_s = compute_delay_s(
            self.device_flops[cut_idx],
            dev["clock_hz"],
            dev["cores"],
            dev["utilisation"],
        )
        srv_s = self.server_cycles[cut_idx] / clock
        return RoundCost(
            device_compute_s=dev_s,
            uplink_s=uplink_s,
            server_compute_s=srv_s,
            downlink_s=downlink_s,
            device_compute_j=compute_energy_j(
                dev_s, dev["clock_hz"], dev["kappa"], dev["static_power_w"]
            ),
            device_tx_j=dev["tx_power_w"] * uplink_s,
            server_compute_j=compute_energy_j(
                srv_s, clock, self.server.kappa, self.server.static_power_w
            ),
            downlink_j=self.server.tx_power_w * downlink_s,
            uplink_bytes=up_bytes,
            downlink_bytes=down_bytes,
            server_clock_hz=clock,
        )


def link_rates(
    devices: Sequence[DeviceState], what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(D,) uplink and downlink rates of ``devices``; ``what`` names the caller that needs them."""
    missing = [
        d.partition_id
        for d in devices
        if d.uplink_bps is None or d.downlink_bps is None
    ]
    if missing:
        raise ConfigError(
            f"{what} needs link rates (uplink_bps, downlink_bps); devices {missing} lack them"
        )
    up = np.array([d.uplink_bps for d in devices], dtype=float)
    down = np.array([d.downlink_bps for d in devices], dtype=float)
    return up, down

"""What the server knows when it decides: devices, their links, and the round's workload."""

from __future__ import annotations

from dataclasses import dataclass, field

from splitkd_flwr.core.constants import SPLIT_MODES
from splitkd_flwr.core.errors import ConfigError


@dataclass(frozen=True)
class DeviceState:
    """One device as the selector and planner see it at the start of a round.

    Link figures are the modelled 5G NR link in simulation and ``None`` where nothing
    is known (a deployment without a channel report).
    """

    node_id: int
    partition_id: int
    profile_name: str  # a key of the device-profile table (simulation/devices.py)
    uplink_bps: float | None = None
    downlink_bps: float | None = None
    snr_db: float | None = None
    # Modelled energy this device has spent so far in the run
    energy_used_j: float = 0.0
    energy_budget_j: float | None = None  # None: unlimited
    rounds_trained: int = 0


@dataclass(frozen=True)
class Workload:
    """The training work of one round, fixed for the run; planners size delay and energy from it."""

    num_student_layers: int
    batch_size: int
    seq_len: int
    batches_per_round: int  # mini-batches per local epoch x local epochs
    wire_bytes_per_element: int = 4  # 4 fp32, 2 fp16/bf16
    # Device-side weights sent down and up once per round
    param_bytes_per_element: int = 4
    # HF config of the (modelled) student
    student_config: dict = field(default_factory=dict)
    # HF config of the (modelled) teacher
    teacher_config: dict = field(default_factory=dict)
    # What the memory model sizes (simulation/memory.py): LoRA rank (0 = full
    # fine-tuning), bf16-mixed training, teacher bytes per weight, checkpointing.
    lora_rank: int = 0
    mixed_precision: bool = False
    teacher_bytes_per_element: int = 4
    gradient_checkpointing: bool = False
    # Whether planners refuse cuts that do not fit a profile's memory (a run: yes; the
    # paper's case study, which assumes memory is no constraint: no).
    memory_limits: bool = False
    # Where the student's head and the loss run (core.constants.SPLIT_MODES): "seed" sends
    # labels up; "u-shape" keeps head and loss on the device and adds a second exchange.
    split_mode: str = "seed"
    # u-shape: the teacher's soft labels go down as top-k log-probs + ids + tail (0: the
    # full distribution); ignored in "seed" mode, where the teacher's output stays put.
    teacher_top_k: int = 0

    def __post_init__(self) -> None:
        if self.split_mode not in SPLIT_MODES:
            raise ConfigError(
                f"split mode must be one of {SPLIT_MODES}, got {self.split_mode!r}"
            )
        if self.teacher_top_k < 0:
            raise ConfigError(f"teacher top-k must be >= 0, got {self.teacher_top_k}")

    @property
    def ushape(self) -> bool:
        """Whether the device runs the student's head and the loss."""
        return self.split_mode == "u-shape"

"""Values that several layers must agree on; each has its one home here."""

from typing import Literal, get_args

# Label of a position with no next-token target (PyTorch's cross-entropy default).
IGNORE_INDEX = -100

WireDtype = Literal["fp32", "fp16", "bf16", "int8"]
# Float tensors on the data plane travel in one of these; integers always go as they are.
WIRE_DTYPES: tuple[str, ...] = get_args(WireDtype)
# Bytes per float element on the wire (int8 adds one fp32 scale per channel).
WIRE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}

Divergence = Literal["forward-kl", "reverse-kl", "jsd"]
DIVERGENCES: tuple[str, ...] = get_args(Divergence)

MODES: tuple[str, ...] = ("split-kd", "koala")

# The case study models Llama-3.2-1B (16 decoder layers) as the student, so the tiny
# default student is 16 layers deep too: cut layer c means the same block in both.
# (Here, not in default_models, so a run config is checked without importing transformers.)
STUDENT_NUM_LAYERS = 16

# How a run splits a user's text among simulated vehicles (run-config `vehicle-partitioner`).
VEHICLE_PARTITIONERS: tuple[str, ...] = (
    "auto",
    "by-entry",
    "iid",
    "dirichlet",
    "column",
)

# Where a model runs (`server-device`, node `torch-device`): auto | cpu | cuda | cuda:N | mps.
DEVICE_SPEC_PATTERN = r"^(auto|cpu|cuda|cuda:\d+|mps)$"
# `teacher-dtype`: auto = bf16 on an accelerator that supports it, fp32 on the CPU.
TEACHER_DTYPES: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
# `train-precision`: bf16-mixed = bf16 autocast over fp32 master weights and optimizer state.
TRAIN_PRECISIONS: tuple[str, ...] = ("fp32", "bf16-mixed")
# `teacher-device-map`: none = the whole teacher on server-device; auto = accelerate shards it.
TEACHER_DEVICE_MAPS: tuple[str, ...] = ("none", "auto")
# Where the student's head and the loss run: "seed" (server; labels go up), "u-shape" (device).
SPLIT_MODES: tuple[str, ...] = ("seed", "u-shape")

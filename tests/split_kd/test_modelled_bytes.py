"""The cost model's bytes per mini-batch equal what a real round's data plane carried.

A real round (strategy, client handlers, gRPC data plane, in one process) in each split
mode; the model is built from the same run config through ``Workspace.workload``, the one
place a run prices its rounds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitkd_flwr.simulation.cost import CostModel
from splitkd_flwr.simulation.devices import DEFAULT_PROFILES
from splitkd_flwr.simulation.memory import MemoryModel
from splitkd_flwr.split_kd.audit_run import run_and_capture
from splitkd_flwr.split_kd.workspace import Workspace
from tests.apps.tiny import tiny_run_config

BATCH, SEQ, CUT = 8, 32, 2
# A frame's header: 12 fixed bytes, the JSON meta (the loss and its terms), per tensor
# its name, dtype, shape and length, and up to 63 bytes of padding before its payload.
# Far less than any tensor the model could miss: the mask alone is 8 x 32 x 8 = 2 kB.
HEADER_BYTES_PER_FRAME = 512


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"split_mode": "u-shape"},
        {"split_mode": "u-shape", "teacher_top_k": 3, "wire_dtype": "bf16"},
    ],
    ids=["seed", "u-shape", "u-shape-top3-bf16"],
)
def test_modelled_bytes_per_mini_batch_equal_the_measured(
    tmp_path: Path, overrides: dict[str, object]
) -> None:
    # Prepare
    config = tiny_run_config(
        tmp_path / "models",
        batch_size=BATCH,
        seq_len=SEQ,
        cut_layer=CUT,
        **overrides,
    )

    # Execute
    run = run_and_capture(config, tmp_path / "work", num_devices=1)
    workload = Workspace.load(config).workload()
    cost = CostModel(workload, DEFAULT_PROFILES["rtx4090"])
    memory = MemoryModel(workload)

    # Assert: full B x T mini-batches (what the model prices), then bytes per mini-batch
    steps = run.capture.steps()
    assert len(steps) == 2
    assert all(s["student_hidden"].shape[:2] == (BATCH, SEQ) for s in steps)
    assert workload.split_mode == config.split_mode
    frames = 1 if config.split_mode == "seed" else 2  # each way per mini-batch
    for measured, modelled in (
        (run.bytes_up_per_step, cost.batch_up_bytes),
        (run.bytes_down_per_step, cost.batch_down_bytes),
    ):
        assert 0 <= measured - modelled <= frames * HEADER_BYTES_PER_FRAME
    # and the device's weights the round returned, as the memory model sizes them
    returned = run.capture.returned_weights
    assert (
        sum(t.numel() * t.element_size() for t in returned.values())
        == (memory.weights_bytes_per_round()[CUT - 1])
    )
    assert all(t.dtype == torch.float32 for t in returned.values())

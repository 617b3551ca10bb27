"""The memory model per side and cut, and planners that never choose a cut that does not fit."""

from dataclasses import replace

import numpy as np
import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import DeviceState, Workload
from splitkd_flwr.simulation.devices import DEFAULT_PROFILES, Fleet
from splitkd_flwr.simulation.memory import MemoryModel, fits
from splitkd_flwr.simulation.planning import EnergyOptimal, Fixed

# Llama-3.2-1B student / Llama-3.1-8B teacher (the defaults), batch 8 x 64.
FULL = Workload(16, 8, 64, 4, teacher_bytes_per_element=2, memory_limits=True)
LORA = Workload(
    16,
    8,
    64,
    4,
    teacher_bytes_per_element=2,
    lora_rank=64,
    mixed_precision=True,
    memory_limits=True,
)


def test_device_memory_grows_with_the_cut_and_server_memory_shrinks() -> None:
    model = MemoryModel(FULL)
    device, server = model.device().total, model.server().total
    assert np.all(np.diff(device) > 0) and np.all(np.diff(server) < 0)
    # the server keeps the whole global student at every cut
    np.testing.assert_array_equal(
        MemoryModel(LORA).server().weights[0], MemoryModel(LORA).server().weights
    )


def test_lora_bf16_and_checkpointing_each_need_less() -> None:
    full = MemoryModel(FULL).device()
    lora = MemoryModel(LORA).device()
    checkpointed = MemoryModel(
        Workload(16, 8, 64, 4, teacher_bytes_per_element=2, gradient_checkpointing=True)
    ).device()
    assert np.all(lora.total < full.total / 3)
    assert np.all(lora.optimizer < full.optimizer / 20)
    assert np.all(checkpointed.activations[1:] < full.activations[1:])
    np.testing.assert_array_equal(checkpointed.weights, full.weights)


def test_device_table_is_the_teachers_embedding_in_its_dtype() -> None:
    bf16 = MemoryModel(FULL).device().teacher
    fp32 = MemoryModel(Workload(16, 8, 64, 4)).device().teacher
    np.testing.assert_array_equal(bf16, 128256 * 4096 * 2)
    np.testing.assert_array_equal(fp32, 2 * bf16)


def test_weights_per_round_llama_1b_rank_64_cut_4_is_about_2_percent() -> None:
    full = MemoryModel(FULL).weights_bytes_per_round()[3]
    lora = MemoryModel(LORA).weights_bytes_per_round()[3]
    assert lora / full == pytest.approx(0.022, abs=0.002)


def test_fits_leaves_headroom_and_unknown_memory_fits() -> None:
    assert fits(np.array([7.0e9]), 8e9).tolist() == [True]
    assert fits(np.array([7.5e9]), 8e9).tolist() == [False]
    assert fits(np.array([1e15]), 0.0).tolist() == [True]


def test_planner_refuses_a_cut_that_does_not_fit_an_8_gb_orin_nx() -> None:
    # Prepare: full fine-tuning of the 1B student; cut 15 puts 15 blocks on the device
    planner = Fixed(FULL, cut_layer=15)
    orin_nx_8gb = DeviceState(0, 0, "orin-nx-0.76", uplink_bps=1e8, downlink_bps=1e8)
    assert DEFAULT_PROFILES["orin-nx-0.76"].memory_bytes == 8e9

    # Execute / Assert: refused, with the sizes that say why
    with pytest.raises(
        ConfigError, match=r"cut-layer 15 does not fit: the device side"
    ):
        planner.plan(orin_nx_8gb, 1)
    with pytest.raises(ConfigError, match=r"orin-nx-0.76 \(Jetson Orin NX, 8 GB\)"):
        planner.plan(orin_nx_8gb, 1)


@pytest.mark.parametrize("profile", ["orin-nx-0.76", "orin-nx-0.91", "agx-orin-1.3"])
def test_energy_optimal_only_chooses_cuts_that_fit(profile: str) -> None:
    # Prepare: LoRA + bf16, where the server fits the RTX 4090 and devices differ
    planner = EnergyOptimal(LORA)
    state = DeviceState(0, 0, profile, uplink_bps=5e8, downlink_bps=1e9)
    fit = planner.cut_fits(DEFAULT_PROFILES[profile])

    # Execute
    plan = planner.plan(state, 1)

    # Assert
    assert fit.any() and fit[plan.cut_layer - 1]
    assert planner.why_not(DEFAULT_PROFILES[profile], plan.cut_layer) == ""


def test_energy_optimal_moves_off_the_cheapest_cut_when_the_server_cannot_hold_it() -> (
    None
):
    # Prepare: unconstrained, energy-optimal puts 1 block on the device (cut 1); then a
    # server with only the memory that cuts >= 5 need
    state = DeviceState(0, 0, "agx-orin-1.3", uplink_bps=5e8, downlink_bps=1e9)
    server = DEFAULT_PROFILES["rtx4090"]
    need = MemoryModel(LORA).server().total

    def with_server_memory(memory_bytes: float) -> Fleet:
        server_memory = replace(server, memory_bytes=memory_bytes)
        return Fleet(profiles={**DEFAULT_PROFILES, "rtx4090": server_memory})

    # Execute: unknown (unlimited) server memory, then just enough for cut 5
    free = EnergyOptimal(LORA, fleet=with_server_memory(0.0)).plan(state, 1)
    constrained = EnergyOptimal(LORA, fleet=with_server_memory(need[4] / 0.9)).plan(
        state, 1
    )

    # Assert
    assert free.cut_layer == 1
    assert constrained.cut_layer == 5 and constrained.feasible


def test_without_memory_limits_planners_ignore_memory() -> None:
    # the paper's case study assumes memory is no constraint
    planner = Fixed(replace(FULL, memory_limits=False), cut_layer=15)
    state = DeviceState(0, 0, "orin-nx-0.76", uplink_bps=1e8, downlink_bps=1e8)
    assert planner.plan(state, 1).cut_layer == 15


def test_ushape_device_holds_the_head_and_the_logits() -> None:
    # Prepare
    seed, ushape = MemoryModel(FULL), MemoryModel(replace(FULL, split_mode="u-shape"))
    vocab, hidden, tokens = 128256, 2048, 8 * 64
    head = vocab * hidden + hidden  # LM head + final norm

    # Execute
    grown = ushape.device().total - seed.device().total
    shrunk = seed.server().total - ushape.server().total

    # Assert: the device trains the head (fp32 weights, gradients, two AdamW moments)
    # and holds the loss's (B, T, V) logits; the server no longer does either
    logits = 4 * tokens * vocab * 4  # LOGIT_COPIES fp32 copies
    assert np.all(grown >= head * 16 + logits)
    assert np.all(shrunk >= head * 12 + 3 * tokens * vocab * 4)
    np.testing.assert_array_equal(
        ushape.device().gradients - seed.device().gradients, head * 4
    )
    # the weights a round carries each way gain the head
    np.testing.assert_array_equal(
        ushape.weights_bytes_per_round() - seed.weights_bytes_per_round(), head * 4
    )


def test_ushape_at_8_x_512_does_not_fit_a_16_gb_orin_nx_where_seed_does() -> None:
    # Prepare: the real workload's mini-batch (8 x 512), full fine-tuning
    seed = replace(FULL, seq_len=512)
    ushape = replace(seed, split_mode="u-shape")
    orin_nx_16gb = DEFAULT_PROFILES["orin-nx-0.91"]
    assert orin_nx_16gb.memory_bytes == 16e9
    state = DeviceState(0, 0, "orin-nx-0.91", uplink_bps=1e8, downlink_bps=1e8)

    # Execute / Assert: 4.2 GB of head training and 8.4 GB of logits move to the device
    assert Fixed(seed, cut_layer=1).plan(state, 1).cut_layer == 1
    assert not EnergyOptimal(ushape).cut_fits(orin_nx_16gb).any()
    with pytest.raises(ConfigError, match=r"cut-layer 1 does not fit: the device side"):
        Fixed(ushape, cut_layer=1).plan(state, 1)

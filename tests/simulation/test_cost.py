"""Tests of the cost model: FLOPs, bytes, delay and energy per cut, against hand counts and torch."""

import numpy as np
import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.types import Workload
from splitkd_flwr.simulation.cost import (
    LLAMA_3_1_8B,
    LLAMA_3_2_1B,
    CostModel,
    DeviceArrays,
    ModelShape,
)
from splitkd_flwr.simulation.devices import Fleet

TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 256,
    "tie_word_embeddings": False,
}


def test_modelled_llama_sizes_match_the_public_configs() -> None:
    one_b, eight_b = (
        ModelShape.from_config(LLAMA_3_2_1B),
        ModelShape.from_config(LLAMA_3_1_8B),
    )
    # parameters: embeddings (tied for 1B) + layers, norms excluded (< 0.01 %)
    assert (
        one_b.vocab * one_b.hidden + one_b.layers * one_b.layer_params
    ) / 1e9 == pytest.approx(1.236, abs=2e-3)
    assert (
        2 * eight_b.vocab * eight_b.hidden + eight_b.layers * eight_b.layer_params
    ) / 1e9 == pytest.approx(8.030, abs=2e-3)
    # system-model.md section 4, s = 512
    assert one_b.layer_forward_flops(512) / 1e9 == pytest.approx(64.4, abs=0.05)
    assert eight_b.layer_forward_flops(512) / 1e9 == pytest.approx(227.6, abs=0.05)
    assert one_b.head_forward_flops(512) / 1e9 == pytest.approx(269, abs=0.5)
    assert eight_b.head_forward_flops(512) / 1e9 == pytest.approx(538, abs=0.5)


def test_forward_flops_match_torch_flop_counter() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from torch.utils.flop_counter import FlopCounterMode

    # Prepare: eager attention, so the s x s products are matmuls the counter sees
    config = transformers.LlamaConfig(
        **{k: v for k, v in TINY.items() if k != "model_type"}
    )
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config)
    batch, seq = 2, 48
    ids = torch.randint(0, TINY["vocab_size"], (batch, seq))
    # Execute
    with FlopCounterMode(display=False) as forward:
        model(input_ids=ids)
    with FlopCounterMode(display=False) as train:
        model(input_ids=ids).logits.sum().backward()
    # Assert
    shape = ModelShape.from_config(TINY)
    modelled = batch * (
        shape.layers * shape.layer_forward_flops(seq) + shape.head_forward_flops(seq)
    )
    assert forward.get_total_flops() == pytest.approx(modelled, rel=0.03)
    assert train.get_total_flops() == pytest.approx(3 * modelled, rel=0.03)


def _model(**workload: object) -> CostModel:
    w = Workload(
        num_student_layers=16,
        batch_size=8,
        seq_len=512,
        batches_per_round=4,
        wire_bytes_per_element=2,
        param_bytes_per_element=2,
        **workload,
    )
    return CostModel(w, Fleet().server_profile)


def test_per_cut_flops_and_bytes() -> None:
    m = _model()
    one_b = ModelShape.from_config(LLAMA_3_2_1B)
    layer_train = 3 * one_b.layer_forward_flops(512) * 8 * 4  # per layer per round
    assert np.allclose(np.diff(m.device_flops), layer_train)
    assert np.allclose(np.diff(m.server_flops), -layer_train)
    assert (
        np.ptp(m.device_flops + m.server_flops) < 1e-6 * m.server_flops[0]
    )  # work only moves
    # smashed student hidden per batch at bf16 is 134 Mbit (system-model.md section 4)
    grad_bits = 8 * (m.downlink_bytes - m.param_bytes) / 4
    assert grad_bits[0] / 1e6 == pytest.approx(134.2, abs=0.1)
    assert np.all(np.diff(m.param_bytes) == 2 * one_b.layer_params)


def test_delay_and_energy_by_hand_and_grid_equals_scalars() -> None:
    # Prepare
    m, fleet = _model(), Fleet()
    profiles = [fleet.profile_of(i) for i in (0, 8)]
    up, down, clocks = (
        np.array([8e8, 5e7]),
        np.array([1.5e9, 2e8]),
        np.array([0.9e9, 2.52e9]),
    )
    # Execute
    grid = m.evaluate(DeviceArrays.of(profiles), up, down, clocks)
    # Assert: one point by hand
    d, c, k = 1, 4, 0
    p, s = profiles[d], fleet.server_profile
    dev_s = m.device_flops[c] / (p.clock_hz * p.cores * 2 * p.utilisation)
    srv_s = m.server_flops[c] / (clocks[k] * s.cores * 2 * s.utilisation)
    up_s, down_s = 8 * m.uplink_bytes[c] / up[d], 8 * m.downlink_bytes[c] / down[d]
    energy = (
        (p.kappa * p.clock_hz**3 + p.static_power_w) * dev_s
        + p.tx_power_w * up_s
        + (s.kappa * clocks[k] ** 3 + s.static_power_w) * srv_s
        + s.tx_power_w * down_s
    )
    assert grid.delay_s[d, c, k] == pytest.approx(dev_s + srv_s + up_s + down_s)
    assert grid.energy_j[d, c, k] == pytest.approx(energy)
    assert grid.delay_s.shape == (2, 15, 2)
    for dd in range(2):  # the grid equals one-point evaluations
        for cc in (0, 7, 14):
            one = m.evaluate(
                DeviceArrays.of([profiles[dd]]),
                up[dd : dd + 1],
                down[dd : dd + 1],
                [[[clocks[1]]]],
                [[[cc]]],
            )
            assert one.record((0, 0, 0)) == pytest.approx(grid.record((dd, cc, 1)))


def test_zero_rate_costs_infinite_delay() -> None:
    m = _model()
    cost = m.evaluate(DeviceArrays.of([Fleet().profile_of(0)]), [0.0], [1e9], [2e9])
    assert np.all(np.isinf(cost.delay_s)) and np.all(np.isinf(cost.energy_j))


def test_configs_must_agree_with_the_workload() -> None:
    with pytest.raises(ConfigError):
        CostModel(Workload(12, 1, 8, 1, student_config=TINY), Fleet().server_profile)
    with pytest.raises(ConfigError):
        ModelShape.from_config({"hidden_size": 8})


def test_ushape_moves_the_head_to_the_device_and_prices_its_exchange() -> None:
    # Prepare: the same round in both modes (bf16 wire, Llama-3.2-1B / 3.1-8B shapes)
    seed, full = _model(), _model(split_mode="u-shape")
    top8 = _model(split_mode="u-shape", teacher_top_k=8)
    one_b = ModelShape.from_config(LLAMA_3_2_1B)
    tokens = 8 * 512
    # Assert: the head's training (3x its forward) moves from the server to the device
    head = 3 * one_b.head_forward_flops(512) * 8 * 4
    assert np.allclose(full.device_flops - seed.device_flops, head)
    assert np.allclose(seed.server_flops - full.server_flops, head)
    assert np.allclose(
        full.device_flops + full.server_flops, seed.device_flops + seed.server_flops
    )
    assert np.array_equal(top8.device_flops, full.device_flops)
    # bytes per token, by hand: d_s = 2048, d_t = 4096, V = 128256, 2 B floats, 8 B ints
    smashed = (2048 + 4096) * 2 + 8  # + the int64 mask
    assert seed.batch_up_bytes == tokens * (smashed + 8)  # + the int64 labels
    assert seed.batch_down_bytes == tokens * 2048 * 2  # the gradient at the cut
    assert full.batch_up_bytes == tokens * (smashed + 2048 * 2)  # + gradient at the top
    # hidden state at the top, soft labels, gradient at the cut
    assert full.batch_down_bytes == tokens * (2048 * 2 + 128256 * 2 + 2048 * 2)
    # top-8: k log-probs (wire floats), k int64 ids, the tail mass
    assert top8.batch_down_bytes == tokens * (2048 * 2 + 8 * 2 + 8 * 8 + 2 + 2048 * 2)
    assert top8.batch_up_bytes == full.batch_up_bytes
    # the device also receives and returns the LM head each round
    assert np.array_equal(
        full.param_bytes - seed.param_bytes, np.full(15, 128256 * 2048 * 2)
    )
    per_round = full.downlink_bytes - full.param_bytes
    assert np.allclose(per_round, 4 * full.batch_down_bytes)
    # at fp32 the full distribution alone is 128256 x 4 B = 513 kB per token
    fp32 = CostModel(
        Workload(16, 8, 512, 4, split_mode="u-shape"), Fleet().server_profile
    )
    soft_per_token = fp32.batch_down_bytes / tokens - 2 * 2048 * 4
    assert soft_per_token == 128256 * 4


def test_split_mode_and_top_k_are_checked() -> None:
    with pytest.raises(ConfigError, match="split mode"):
        Workload(16, 8, 512, 4, split_mode="v-shape")
    with pytest.raises(ConfigError, match="top-k"):
        Workload(16, 8, 512, 4, split_mode="u-shape", teacher_top_k=-1)
    with pytest.raises(ConfigError, match="vocabulary"):
        _model(split_mode="u-shape", teacher_top_k=128257)
    # seed mode sends no soft labels: its top-k changes nothing
    assert _model(teacher_top_k=8).batch_down_bytes == _model().batch_down_bytes

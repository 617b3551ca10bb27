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


def _model(**workload: int) -> CostModel:
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

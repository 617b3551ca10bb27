"""d_chi-privacy noise: its radius law, its direction, and a source the server cannot replay."""

import pytest
import torch

from splitkd_flwr.split.noise import NOISED, dchi_noise, noiser


def test_radius_follows_gamma_d_over_epsilon_and_direction_is_isotropic() -> None:
    # Prepare
    d, epsilon = 32, 4.0
    x = torch.zeros(20000, d)

    # Execute
    z = dchi_noise(x, epsilon, torch.Generator().manual_seed(0))

    # Assert: Gamma(d, 1/eps) has mean d/eps and variance d/eps^2
    radius = z.norm(dim=-1)
    assert radius.mean().item() == pytest.approx(d / epsilon, rel=0.01)
    assert radius.var().item() == pytest.approx(d / epsilon**2, rel=0.05)
    assert z.mean(0).abs().max().item() < 0.1 * d / epsilon / d**0.5


def test_device_noise_is_not_replayable_from_the_plans_seed() -> None:
    # Prepare: the device seeds torch with the plan's seed, which the server chose
    tensors = {name: torch.ones(2, 3, 8) for name in NOISED}
    tensors["attention_mask"] = torch.ones(2, 3, dtype=torch.long)

    # Execute
    torch.manual_seed(7)
    first = noiser(10.0)(tensors)
    torch.manual_seed(7)
    second = noiser(10.0)(tensors)

    # Assert
    for name in NOISED:
        assert not torch.equal(first[name], second[name]), name
    assert first["attention_mask"] is tensors["attention_mask"]
    assert noiser(0.0)(tensors) is tensors

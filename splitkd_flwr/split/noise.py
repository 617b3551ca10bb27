"""Calibrated noise on what leaves the device: d_chi-privacy (metric DP) per vector.

The mechanism of Feyisetan et al. (2020), used on embeddings by SplitLLM's DxP: to each
vector ``x`` of dimension ``d`` add ``z`` with density proportional to
``exp(-epsilon * ||z||)``, drawn as a uniform direction times a radius from
``Gamma(d, 1 / epsilon)`` (mean radius ``d / epsilon``). For two inputs whose vectors
are ``x`` and ``x'``, the outputs' densities differ by at most
``exp(epsilon * ||x - x'||)``: epsilon is per token and per unit of Euclidean distance.
On the teacher's input embeddings that is the DxP guarantee between any two tokens
(``epsilon * ||E[a] - E[b]||``). On a student hidden state it bounds only what the
server learns from that vector about the hidden state itself, which depends on every
earlier token: no per-token accounting of the text follows from it.

The noise comes from the device's own random source: the round seed travels in the
server's plan, and noise the server can regenerate is no noise.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import torch
from torch import Tensor

# The up-frame tensors that carry activations (what smashed-noise perturbs)
NOISED = ("teacher_embeds", "student_hidden")


def private_generator() -> torch.Generator:
    """A generator seeded from the OS's randomness, unknown to the server."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def dchi_noise(x: Tensor, epsilon: float, generator: torch.Generator) -> Tensor:
    """Return ``x`` with d_chi-privacy noise of level ``epsilon`` on each last-dim vector."""
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    d = x.shape[-1]
    direction = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    # Gamma(d, rate=epsilon) via the sum of d exponentials is slow; torch's sampler has
    # no generator argument, so draw it from uniforms: -log(U) summed is Gamma(d, 1).
    uniforms = torch.rand((*x.shape[:-1], d), generator=generator, dtype=torch.float64)
    radius = (-torch.log1p(-uniforms)).sum(-1) / epsilon  # (...,)
    noise = direction * radius.to(torch.float32)[..., None]
    return (x.float() + noise).to(x.dtype)


def noiser(
    epsilon: float,
) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """What a device applies to an up-frame: d_chi noise on its activations, or nothing."""
    if epsilon == 0:
        return lambda tensors: tensors
    generator = private_generator()

    def privatize(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            name: dchi_noise(t, epsilon, generator) if name in NOISED else t
            for name, t in tensors.items()
        }

    return privatize

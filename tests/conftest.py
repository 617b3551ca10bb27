"""Shared test set-up: seeded, single-threaded torch (the CI machine has 2 cores)."""

import random

import numpy as np
import pytest

try:
    import torch
except ImportError:  # the numpy-only tests run without torch
    torch = None


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    if torch is not None:
        torch.manual_seed(0)
        torch.set_num_threads(1)

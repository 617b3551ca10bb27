"""A KOALA run's state goes through a checkpoint exactly: every model and the node sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.flower.checkpoint import Checkpoint, CheckpointStore
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.koala.run import build_koala
from tests.apps.tiny import save_tiny_pair, tiny_llama


def _config(tmp_path: Path) -> RunConfig:
    large_dir, small_a = save_tiny_pair(tmp_path / "models", student_layers=2)
    small_b = tmp_path / "models" / "student-b"
    tiny_llama(300, hidden=8, layers=1).save_pretrained(small_b)
    student = f"{small_a},{small_b}"
    return RunConfig(
        mode="koala",
        teacher=str(large_dir),
        student=student,
        seq_len=32,
        batch_size=8,
        eval_batches=1,
        koala_prompts=0,
    )


def test_a_koala_checkpoint_restores_every_model_and_the_sampler(
    tmp_path: Path,
) -> None:
    # Prepare: a strategy whose models and sampler moved on, as after some rounds
    config = _config(tmp_path)
    with build_koala(config, tmp_path / "a") as trained:
        with torch.no_grad():
            for model in [trained.large, *trained.smalls]:
                for param in model.parameters():
                    param.add_(torch.randn_like(param))
        trained._rng.random()
        store = CheckpointStore(tmp_path / "a")
        store.save(Checkpoint(3, {"strategy": trained.state_dict()}, [], {}))

        # Execute
        with build_koala(config, tmp_path / "b") as resumed:
            resumed.load_state_dict(store.latest().state["strategy"])

            # Assert
            for want, got in zip(
                [trained.large, *trained.smalls],
                [resumed.large, *resumed.smalls],
                strict=True,
            ):
                for (name, a), b in zip(
                    want.state_dict().items(), got.state_dict().values(), strict=True
                ):
                    assert torch.equal(a, b), name
            nodes = list(range(20))
            assert trained._rng.sample(nodes, 5) == resumed._rng.sample(nodes, 5)
            # A checkpoint of another set of architectures is refused, naming it.
            state = store.latest().state["strategy"]
            with pytest.raises(ConfigError, match="4 small architectures"):
                resumed.load_state_dict({**state, "smalls": [*state["smalls"]] * 2})

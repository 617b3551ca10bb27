"""A real u-shape round (strategy, client handlers, gRPC data plane): what the server receives.

Every data-plane frame and every Flower message of the round is inspected: nothing the
server receives is a direct read of the device's labels or token ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from splitkd_flwr.split.step import make_labels
from splitkd_flwr.split_kd import protocol
from splitkd_flwr.split_kd.audit_run import AuditRun, run_and_capture
from tests.apps.tiny import tiny_run_config


def _run(tmp_path: Path, **overrides: object) -> AuditRun:
    config = tiny_run_config(tmp_path / "models", **overrides)
    return run_and_capture(config, tmp_path / "work", num_devices=1)


def _is_direct_read(tensor: torch.Tensor, secrets: list[torch.Tensor]) -> bool:
    """Whether ``tensor`` holds a secret, or the secret's values on its real positions."""
    for secret in secrets:
        if tensor.shape[:2] == secret.shape:
            values = tensor if tensor.dim() == 2 else tensor[..., 0]
            if torch.equal(values.round().long(), secret):
                return True
        if tensor.numel() == secret.numel() and torch.equal(
            tensor.flatten().round().long(), secret.flatten()
        ):
            return True
    return False


@pytest.mark.parametrize(
    ("top_k", "private_layers"),
    [(3, 0), (3, 1), pytest.param(0, 0, marks=pytest.mark.slow)],
)
def test_ushape_round_sends_no_label_and_no_id_to_the_server(
    tmp_path: Path, top_k: int, private_layers: int
) -> None:
    # Execute
    run = _run(
        tmp_path,
        split_mode="u-shape",
        teacher_top_k=top_k,
        device_private_layers=private_layers,
    )

    # Assert: the round trained, two exchanges per mini-batch
    capture = run.capture
    assert len(capture.truth) == 2 and len(capture.exchanges) == 4
    secrets = [
        s
        for b in capture.truth
        for s in (b["input_ids"], make_labels(b["input_ids"], b["attention_mask"]))
    ]
    for exchange, batch in zip(capture.exchanges[::2], capture.truth, strict=True):
        assert set(exchange.up) == {
            "teacher_embeds",
            "student_hidden",
            "attention_mask",
        }
        # the mask says no more than the lengths
        assert torch.equal(exchange.up["attention_mask"], batch["attention_mask"])
        lengths = batch["attention_mask"].sum(-1, keepdim=True)
        assert torch.equal(batch["attention_mask"].bool(), torch.arange(16) < lengths)
    for exchange in capture.exchanges[1::2]:
        assert set(exchange.up) == {"grad_top"}
        assert set(exchange.up_meta) <= {"loss", "ce", "kd"}
    for exchange in capture.exchanges:
        for name, tensor in exchange.up.items():
            if name != "attention_mask":
                assert tensor.is_floating_point(), name
                assert not _is_direct_read(tensor, secrets), name
    # Flower: the plan and metrics are scalars; no array is a secret
    kinds = set()
    for message in run.messages:
        for key, record in message.content.items():
            kinds.add(type(record))
            if isinstance(record, ArrayRecord):
                for name, tensor in record.to_torch_state_dict().items():
                    assert not _is_direct_read(tensor, secrets), (key, name)
            else:
                assert isinstance(record, (ConfigRecord, MetricRecord))
    assert ArrayRecord in kinds and MetricRecord in kinds
    assert set(capture.returned_weights) >= {"lm_head.weight", "model.norm.weight"}
    # private layers: the embeddings and block 0 are neither sent nor returned
    weights = [
        m.content[protocol.DEVICE_WEIGHTS].to_torch_state_dict()
        for m in run.messages
        if protocol.DEVICE_WEIGHTS in m.content
    ]
    assert len(weights) == 2
    for state in weights:
        lowest = [n for n in state if "embed" in n or ".layers.0." in n]
        assert bool(lowest) != bool(private_layers), lowest
    # the audit prices the device's own student (its private layers) only when it has one
    assert (run.device_perplexity is None) == (private_layers == 0)


@pytest.mark.slow
def test_seed_round_sends_labels_the_server_can_read(tmp_path: Path) -> None:
    # The same inspection finds the seed mode's labels: the check above can fail.
    run = _run(tmp_path)
    capture = run.capture
    assert len(capture.exchanges) == 2
    for exchange, batch in zip(capture.exchanges, capture.truth, strict=True):
        labels = make_labels(batch["input_ids"], batch["attention_mask"])
        assert _is_direct_read(exchange.up["labels"], [labels])

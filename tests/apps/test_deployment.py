"""A real local deployment: flower-superlink, two flower-supernode processes, `flwr run`."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from splitkd_flwr.flower.launch import LocalFederation
from tests.apps.tiny import save_tiny_pair

ROOT = Path(__file__).resolve().parents[2]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_three_supernodes_one_broken_round_rolled_back(
    tmp_path: Path, monkeypatch
) -> None:
    # Prepare
    monkeypatch.setenv("SPLITKD_CACHE", str(tmp_path / "cache"))
    teacher_dir, student_dir = save_tiny_pair(tmp_path / "models", student_layers=4)
    out = tmp_path / "out"
    federation = LocalFederation(home=tmp_path / "flwr", simulation=False, threads=1)
    run_config = {
        "teacher": str(teacher_dir),
        "student": str(student_dir),
        "num-rounds": 3,
        "max-batches-per-epoch": 3,
        "output-dir": str(out),
        "eval-batches": 2,
        "cut-layer": 2,
        "planner": "fixed",
        "min-nodes": 3,
        "scenario": "none",
        "round-timeout-s": 240.0,
    }

    # Execute
    try:
        federation.start()
        devices = ("agx-orin-1.3", "orin-nx-0.91", "agx-xavier-1.2")
        for partition_id, device in enumerate(devices):
            federation.add_supernode(
                {
                    "partition-id": partition_id,
                    "num-partitions": 3,
                    "device": device,
                    "cache-dir": str(tmp_path / f"node-{partition_id}"),
                    # The third vehicle's data is gone: its round must fail cleanly.
                    "data-path": str(tmp_path / "missing.jsonl")
                    if partition_id == 2
                    else "",
                }
            )
        rc = federation.run(ROOT, run_config, timeout_s=480)
        pgids = [p.pid for p in federation.processes]
    finally:
        federation.stop()

    # Assert
    assert rc == 0
    records = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["status"] for r in records[1:]] == ["ok", "ok", "rolled-back"]
    assert [r["device"] for r in records[1:]] == [
        "agx-orin-1.3",
        "orin-nx-0.91",
        "agx-xavier-1.2",
    ]
    # Rolled back exactly: the student after round 3 evaluates bit-for-bit like after round 2.
    assert records[3]["eval-loss"] == records[2]["eval-loss"]
    assert "missing.jsonl" in records[3]["error"] or "data plane" in records[3]["error"]
    trained = load_file(str(out / "student" / "model.safetensors"))
    initial = load_file(str(student_dir / "model.safetensors"))
    assert not torch.equal(
        trained["model.embed_tokens.weight"], initial["model.embed_tokens.weight"]
    )
    assert not torch.equal(trained["lm_head.weight"], initial["lm_head.weight"])
    # Each device holds the teacher's embedding table only, and the deployed student.
    node = tmp_path / "node-0"
    assert set(load_file(str(node / "teacher-embedding.safetensors"))) == {"weight"}
    assert (node / "deployed-student" / "config.json").is_file()
    assert not any(_group_alive(pgid) for pgid in pgids)

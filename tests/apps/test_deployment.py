"""A real local deployment: flower-superlink, two flower-supernode processes, `flwr run`."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from splitkd_flwr.launch import LocalFederation
from tests.apps.tiny import save_tiny_pair

ROOT = Path(__file__).resolve().parents[2]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_two_supernodes_two_rounds(tmp_path: Path, monkeypatch) -> None:
    # Prepare
    monkeypatch.setenv("SPLITKD_CACHE", str(tmp_path / "cache"))
    teacher_dir, student_dir = save_tiny_pair(tmp_path / "models", student_layers=4)
    out = tmp_path / "out"
    federation = LocalFederation(home=tmp_path / "flwr", simulation=False, threads=1)
    run_config = {
        "teacher": str(teacher_dir),
        "student": str(student_dir),
        "num-rounds": 2,
        "max-batches-per-epoch": 3,
        "output-dir": str(out),
        "eval-batches": 2,
        "cut-layer": 2,
        "planner": "fixed",
        "min-nodes": 2,
        "scenario": "none",
        "round-timeout-s": 240.0,
    }

    # Execute
    try:
        federation.start()
        for partition_id, device in enumerate(("agx-orin-1.3", "orin-nx-0.91")):
            federation.add_supernode(
                {
                    "partition-id": partition_id,
                    "num-partitions": 2,
                    "device": device,
                    "cache-dir": str(tmp_path / f"node-{partition_id}"),
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
    assert [r["status"] for r in records[1:]] == ["ok", "ok"]
    assert sorted(r["device"] for r in records[1:]) == ["agx-orin-1.3", "orin-nx-0.91"]
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

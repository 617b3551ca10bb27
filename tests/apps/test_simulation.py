"""End to end under Flower's simulation engine: a real SuperLink, Ray, ServerApp and ClientApps."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from splitkd_flwr.flower.launch import LocalFederation
from splitkd_flwr.transport.stream import self_signed
from tests.apps.tiny import save_tiny_pair

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_three_vehicles_three_rounds_energy_optimal(
    tmp_path: Path, monkeypatch
) -> None:
    # Prepare
    monkeypatch.setenv("SPLITKD_CACHE", str(tmp_path / "cache"))
    teacher_dir, student_dir = save_tiny_pair(tmp_path / "models", student_layers=4)
    out = tmp_path / "out"
    server_tls, _ = self_signed("127.0.0.1")
    (tmp_path / "dp.crt").write_bytes(server_tls.certificate_chain)
    (tmp_path / "dp.key").write_bytes(server_tls.private_key)
    run_config = {
        "teacher": str(teacher_dir),
        "student": str(student_dir),
        "num-rounds": 3,
        "max-batches-per-epoch": 4,
        "output-dir": str(out),
        "eval-batches": 2,
        "planner": "energy-optimal",
        "delay-bound-s": 1000.0,
        "wire-dtype": "fp16",
        "data-plane-certfile": str(tmp_path / "dp.crt"),
        "data-plane-keyfile": str(tmp_path / "dp.key"),
    }

    # Execute
    with LocalFederation(
        home=tmp_path / "flwr", simulation=True, threads=1
    ) as federation:
        rc = federation.run(ROOT, run_config, {"num-supernodes": 3}, timeout_s=480)

    # Assert
    assert rc == 0
    records = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    rounds = [r for r in records if r["round"] >= 1]
    assert [r["status"] for r in rounds] == ["ok", "ok", "ok"]
    assert sorted(r["partition-id"] for r in rounds) == [0, 1, 2]  # round-robin
    for r in rounds:
        assert 1 <= r["cut-layer"] <= 3
        assert r["modelled-delay-s"] <= 1000.0 and r["modelled-energy-j"] > 0
        assert r["modelled-uplink-bps"] > 0 and r["measured-bytes-up"] > 0
        assert r["batches"] == 4 and r["train-loss"] > 0
        # A host with a working NVML measures the server step; one without says "not
        # measured" and reports no figure at all (never a made-up 0 J).
        if r["server-compute-energy-measured"]:
            assert r["server-compute-measured-energy-j"] > 0
        else:
            assert "server-compute-measured-energy-j" not in r
    assert records[-1]["eval-perplexity"] < records[0]["eval-perplexity"]
    trained = AutoModelForCausalLM.from_pretrained(out / "student")
    initial = AutoModelForCausalLM.from_pretrained(student_dir)
    changed = [
        name
        for name, p in trained.state_dict().items()
        if not torch.equal(p, initial.state_dict()[name])
    ]
    assert "model.embed_tokens.weight" in changed and "lm_head.weight" in changed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds ok / rolled back"] == "3 / 0"
    assert summary["deployed student perplexity on devices"] > 0

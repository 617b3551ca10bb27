"""KOALA under Flower's simulation engine, heterogeneous clients; and its plan record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.launch import LocalFederation
from splitkd_flwr.koala.protocol import KoalaPlan
from splitkd_flwr.koala.run import resolve_koala_models
from tests.apps.tiny import save_tiny_pair, tiny_llama

REPO = Path(__file__).resolve().parents[2]


def test_plan_round_trips_and_rejects_bad_values() -> None:
    plan = KoalaPlan(2, 1, 3, 8, 32, 3e-3, 7)
    assert KoalaPlan.from_record(plan.to_record()) == plan
    bad = plan.to_record()
    bad["batch-size"] = 8.5
    with pytest.raises(ConfigError, match="batch-size"):
        KoalaPlan.from_record(bad)


def test_student_key_lists_one_dir_per_architecture(tmp_path: Path) -> None:
    config = RunConfig(
        teacher=str(tmp_path / "large"), student=f"{tmp_path / 'a'}, {tmp_path / 'b'}"
    )
    large, smalls, _ = resolve_koala_models(config)
    assert large == tmp_path / "large"
    assert smalls == [tmp_path / "a", tmp_path / "b"]


@pytest.mark.slow
def test_heterogeneous_koala_simulation_improves_and_saves_the_large_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a large model (hidden 32, 2 layers) and two small architectures
    monkeypatch.setenv("SPLITKD_CACHE", str(tmp_path / "cache"))
    large_dir, small_a = save_tiny_pair(
        tmp_path / "models", student_layers=2
    )  # hidden 16
    small_b = tmp_path / "models" / "student-b"
    vocab = AutoModelForCausalLM.from_pretrained(large_dir).config.vocab_size
    tiny_llama(vocab, hidden=8, layers=1).save_pretrained(small_b)
    out = tmp_path / "out"
    run_config = {
        "mode": "koala",
        "teacher": str(large_dir),
        "student": f"{small_a},{small_b}",
        "num-rounds": 2,
        "max-batches-per-epoch": 4,
        "batch-size": 8,
        "seq-len": 32,
        "device-lr": 0.01,
        "server-lr": 0.01,
        "eval-batches": 2,
        "koala-prompts": 8,
        "koala-max-new-tokens": 6,
        "output-dir": str(out),
    }
    # Execute
    with LocalFederation(
        home=tmp_path / "flwr", simulation=True, threads=1
    ) as federation:
        code = federation.run(
            REPO,
            run_config=run_config,
            federation_config={"num-supernodes": 3},
            timeout_s=300,
        )
    # Assert
    assert code == 0
    records = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert all(r["status"] == "ok" for r in records[1:])
    assert all(r["architectures-heard"] == 2 and r["clients"] == 3 for r in records[1:])
    assert records[-1]["eval-loss"] < records[0]["eval-loss"]
    assert "small-1-eval-loss" in records[-1]
    # sequence-level KD ran: 8 prompts answered by each of the 2 architectures
    assert all(r["seq-kd-answers"] == 16 for r in records[1:])
    saved = AutoModelForCausalLM.from_pretrained(out / "large-model")
    assert saved.config.hidden_size == 32

"""A real simulation killed after round 2 of 4 and resumed ends exactly where an
uninterrupted run does: a real SuperLink, Ray, ServerApp and ClientApps, SIGKILLed."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from splitkd_flwr.flower.launch import LocalFederation
from tests.apps.tiny import save_tiny_pair

ROOT = Path(__file__).resolve().parents[2]


def _config(models: Path, out: Path, **extra) -> dict:
    teacher_dir, student_dir = models / "teacher", models / "student"
    return {
        "teacher": str(teacher_dir),
        "student": str(student_dir),
        "num-rounds": 4,
        "max-batches-per-epoch": 2,
        "eval-batches": 1,
        "planner": "fixed",
        "cut-layer": 2,
        "output-dir": str(out),
        **extra,
    }


def _records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _run(home: Path, config: dict) -> int:
    with LocalFederation(home=home, simulation=True, threads=1) as federation:
        return federation.run(ROOT, config, {"num-supernodes": 2}, timeout_s=240)


def _run_and_kill_after(home: Path, config: dict, checkpoint: Path) -> None:
    """Start the run; SIGKILL the SuperLink's whole process group once ``checkpoint`` exists."""
    federation = LocalFederation(home=home, simulation=True, threads=1)
    federation.start()
    try:
        flwr_run = threading.Thread(
            target=lambda: federation.run(
                ROOT,
                config,
                {"num-supernodes": 2},
                timeout_s=480,
                log_path=home / "flwr-run.log",
            ),
            daemon=True,
        )
        flwr_run.start()
        # Generous: on a loaded 2-core machine Ray alone can take minutes to start.
        deadline = time.monotonic() + 420
        while not checkpoint.is_dir():
            assert time.monotonic() < deadline, "no checkpoint after round 2"
            time.sleep(0.05)
        # The ServerApp (flwr-simulation) and Ray run in the SuperLink's group.
        os.killpg(federation.processes[0].pid, signal.SIGKILL)
        flwr_run.join(60)
    finally:
        federation.stop()


@pytest.mark.slow
def test_killed_after_round_2_resumes_to_a_bit_identical_student(
    tmp_path: Path, monkeypatch
) -> None:
    # Prepare
    monkeypatch.setenv("SPLITKD_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "models"
    save_tiny_pair(models, student_layers=4)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert _run(tmp_path / "flwr-whole", _config(models, whole)) == 0
    assert (whole / "summary.json").is_file()

    # Execute: kill after round 2's checkpoint, then resume in a new federation.
    _run_and_kill_after(
        tmp_path / "flwr-killed",
        _config(models, broken),
        broken / "checkpoint" / "round-0002",
    )
    assert not (broken / "summary.json").exists()
    rc = _run(tmp_path / "flwr-resumed", _config(models, broken, resume=True))

    # Assert
    assert rc == 0 and (broken / "summary.json").is_file()
    want = load_file(str(whole / "student" / "model.safetensors"))
    got = load_file(str(broken / "student" / "model.safetensors"))
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert tensor.equal(got[name]), name
    records = _records(broken)
    assert [r["round"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in records[1:]] == ["ok"] * 4
    assert [r.get("train-loss") for r in records] == [
        r.get("train-loss") for r in _records(whole)
    ]

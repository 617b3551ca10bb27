"""Same config, seed and environment: bit-identical runs, however the run was started.

One tiny simulation twice: through `splitkd simulate` (which sets OMP_NUM_THREADS=1 for
every process it starts) and through plain `flwr run` with OMP_NUM_THREADS=2 in the
environment. The apps set their own threads from the run config (`threads`), so the
per-round losses, held-out figures and the final student must agree bit for bit.
"""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from splitkd_flwr.flower.launch import LocalFederation
from tests.apps.tiny import save_tiny_pair

ROOT = Path(__file__).resolve().parents[2]
SPLITKD = Path(sys.executable).parent / "splitkd"
# Every figure of a round that depends on the numbers (wall times do not).
COMPARED = ("partition-id", "cut-layer", "train-loss", "eval-perplexity", "eval-loss")


def _rounds(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k in COMPARED} for line in lines
    ]


@pytest.mark.slow
def test_simulate_and_plain_flwr_run_agree_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setenv("SPLITKD_CACHE", str(tmp_path / "cache"))
    teacher_dir, student_dir = save_tiny_pair(tmp_path / "models", student_layers=4)
    settings = {
        "teacher": str(teacher_dir),
        "student": str(student_dir),
        "max-batches-per-epoch": 3,
        "eval-batches": 1,
    }
    out_simulate, out_flwr = tmp_path / "simulate", tmp_path / "flwr"

    # Execute: `splitkd simulate`, then plain `flwr run` with another OMP_NUM_THREADS
    command = [str(SPLITKD), "simulate", "--vehicles", "2", "--rounds", "2"]
    command += ["--output-dir", str(out_simulate)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    simulated = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with LocalFederation(home=tmp_path / "flwr-home", simulation=True) as federation:
        rc = federation.run(
            ROOT,
            {**settings, "num-rounds": 2, "output-dir": str(out_flwr)},
            {"num-supernodes": 2},
            timeout_s=300,
            log_path=tmp_path / "flwr-run.log",
        )

    # Assert
    assert simulated.returncode == 0, simulated.stdout[-3000:] + simulated.stderr
    assert rc == 0
    rounds = _rounds(out_simulate)
    assert [r.get("partition-id") for r in rounds] == [None, 0, 1]
    assert rounds == _rounds(out_flwr)
    weights_a = load_file(out_simulate / "student" / "model.safetensors")
    weights_b = load_file(out_flwr / "student" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    initial = load_file(student_dir / "model.safetensors")
    assert not all(torch.equal(initial[k], weights_a[k]) for k in initial)
    for out in (out_simulate, out_flwr):
        summary = json.loads((out / "summary.json").read_text())
        assert summary["environment"]["threads"] == 1
        assert {"torch", "transformers", "flwr"} <= set(summary["environment"])
        assert json.loads((out / "run-config.json").read_text())["threads"] == 1
    # Quiet: no FutureWarning, no warning repeated (per round or per device)
    log = simulated.stdout + simulated.stderr
    assert "FutureWarning" not in log
    # Flower's own line as Ray stops each ClientApp actor at shutdown comes once per
    # actor, or not at all, depending on timing: it is not ours, nor per round.
    warnings = [
        re.sub(r"\d+", "N", line)
        for line in log.splitlines()
        if "WARNING" in line and "Manually terminating ClientAppActor" not in line
    ]
    assert not [w for w, n in Counter(warnings).items() if n > 1], warnings
    assert "Loading weights" not in log and "Writing model shards" not in log

"""`splitkd simulate` refuses a bad run config at once: one line, the key named, non-zero exit.

One case runs the installed command in a fresh process, to time the refusal from a cold
start; the others call the same Typer app in this process (seconds saved per case).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from splitkd_flwr.cli import app
from tests.apps.tiny import save_tiny_pair, tiny_llama

ROOT = Path(__file__).resolve().parents[2]
SPLITKD = Path(sys.executable).parent / "splitkd"


def _simulate(
    tmp_path: Path, *settings: str
) -> tuple[subprocess.CompletedProcess, float]:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), SPLITKD_CACHE=str(cache))
    command = [str(SPLITKD), "simulate", "--output-dir", str(tmp_path / "out")]
    for setting in settings:
        command += ["--set", setting]
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    return done, time.monotonic() - started


def _invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *settings: str):
    """Run `splitkd simulate` in this process; the cache must stay empty."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SPLITKD_CACHE", str(cache))
    command = ["simulate", "--output-dir", str(tmp_path / "out")]
    for setting in settings:
        command += ["--set", setting]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    # Nothing was prepared: the default teacher's training never started.
    assert not any(cache.iterdir())
    return result


@pytest.fixture(scope="module")
def mismatched_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real teacher (with its tokenizer) and a real student with a smaller vocabulary."""
    root = tmp_path_factory.mktemp("models")
    teacher_dir, _ = save_tiny_pair(root, student_layers=4)
    student_dir = root / "small-vocab-student"
    tiny_llama(vocab_size=200, hidden=16, layers=4).save_pretrained(student_dir)
    return teacher_dir, student_dir


def test_a_bad_value_is_refused_within_seconds_of_a_cold_start(tmp_path: Path) -> None:
    # Execute
    done, elapsed_s = _simulate(tmp_path, "kd-alph=0.3")

    # Assert
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'kd-alph'" in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert elapsed_s < 10.0
    # Nothing was prepared: the default teacher's training never started.
    assert not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("cut-layer=20", "cut-layer"),
        ("kd-alpha=2", "kd-alpha"),
        ("wire-dtype=fp8", "wire-dtype"),
        ("teacher=/no/such/teacher", "teacher"),
    ],
)
def test_bad_value_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, named: str
) -> None:
    # Execute
    result = _invoke(tmp_path, monkeypatch, setting)

    # Assert
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr


def test_vocab_mismatch_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mismatched_pair: tuple[Path, Path]
) -> None:
    # Prepare
    teacher_dir, student_dir = mismatched_pair

    # Execute
    result = _invoke(
        tmp_path, monkeypatch, f"teacher={teacher_dir}", f"student={student_dir}"
    )

    # Assert
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "vocabularies differ" in lines[0], result.stderr
    assert "300" in lines[0] and "200" in lines[0]


def test_too_few_vehicle_data_entries_are_refused_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: text for 2 vehicles, a run of 10
    per_vehicle = tmp_path / "per-vehicle"
    per_vehicle.mkdir()
    for i in range(2):
        (per_vehicle / f"vehicle-{i}.txt").write_text("Driver: hello. Assistant: hi.\n")

    # Execute
    result = _invoke(tmp_path, monkeypatch, f"vehicle-data={per_vehicle}")

    # Assert
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 entries for 10 vehicles" in lines[0], result.stderr

"""`splitkd simulate` refuses a bad run config at once: one line, the key named, non-zero exit."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def mismatched_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real teacher (with its tokenizer) and a real student with a smaller vocabulary."""
    root = tmp_path_factory.mktemp("models")
    teacher_dir, _ = save_tiny_pair(root, student_layers=4)
    student_dir = root / "small-vocab-student"
    tiny_llama(vocab_size=200, hidden=16, layers=4).save_pretrained(student_dir)
    return teacher_dir, student_dir


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("kd-alph=0.3", "'kd-alph'"),
        ("cut-layer=20", "cut-layer"),
        ("kd-alpha=2", "kd-alpha"),
        ("wire-dtype=fp8", "wire-dtype"),
        ("teacher=/no/such/teacher", "teacher"),
    ],
)
def test_bad_value_is_one_line_naming_it(
    tmp_path: Path, setting: str, named: str
) -> None:
    # Execute
    done, elapsed_s = _simulate(tmp_path, setting)

    # Assert
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert elapsed_s < 10.0
    # Nothing was prepared: the default teacher's training never started.
    assert not any((tmp_path / "cache").iterdir())


def test_vocab_mismatch_is_refused_before_loading(
    tmp_path: Path, mismatched_pair: tuple[Path, Path]
) -> None:
    # Prepare
    teacher_dir, student_dir = mismatched_pair

    # Execute
    done, elapsed_s = _simulate(
        tmp_path, f"teacher={teacher_dir}", f"student={student_dir}"
    )

    # Assert
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "vocabularies differ" in lines[0], done.stderr
    assert "300" in lines[0] and "200" in lines[0]
    assert elapsed_s < 10.0
    assert not any((tmp_path / "cache").iterdir())


def test_too_few_vehicle_data_entries_are_refused_before_starting(
    tmp_path: Path,
) -> None:
    # Prepare: text for 2 vehicles, a run of 10
    per_vehicle = tmp_path / "per-vehicle"
    per_vehicle.mkdir()
    for i in range(2):
        (per_vehicle / f"vehicle-{i}.txt").write_text("Driver: hello. Assistant: hi.\n")

    # Execute
    done, elapsed_s = _simulate(tmp_path, f"vehicle-data={per_vehicle}")

    # Assert
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 entries for 10 vehicles" in lines[0], done.stderr
    assert elapsed_s < 10.0

"""Clustered rounds end to end under Flower's simulation engine, one vehicle dying mid-round."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from splitkd_flwr.flower.launch import LocalFederation
from tests.apps.tiny import save_tiny_pair

ROOT = Path(__file__).resolve().parents[2]


def _faulty_app(app: Path) -> Path:
    """The project's app with the ClientApp of faulty_client_app.py (vehicle 1 dies)."""
    shutil.copytree(
        ROOT / "splitkd_flwr",
        app / "splitkd_flwr",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(Path(__file__).with_name("faulty_client_app.py"), app)
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = pyproject.replace(
        'clientapp = "splitkd_flwr.client_app:app"',
        'clientapp = "faulty_client_app:app"',
    ).replace(
        'fab-include = ["splitkd_flwr/**/*.py"]',
        'fab-include = ["splitkd_flwr/**/*.py", "faulty_client_app.py"]',
    )
    assert "faulty_client_app.py" in pyproject
    (app / "pyproject.toml").write_text(pyproject)
    return app


@pytest.mark.slow
def test_clusters_of_three_commit_without_the_vehicle_that_died(
    tmp_path: Path, monkeypatch
) -> None:
    # Prepare
    monkeypatch.setenv("SPLITKD_CACHE", str(tmp_path / "cache"))
    teacher_dir, student_dir = save_tiny_pair(tmp_path / "models", student_layers=4)
    out = tmp_path / "out"
    run_config = {
        "teacher": str(teacher_dir),
        "student": str(student_dir),
        "num-rounds": 2,
        "max-batches-per-epoch": 4,
        "output-dir": str(out),
        "eval-batches": 2,
        "cluster-size": 3,
        "cluster-selector": "in-order",
        "min-nodes": 3,
    }

    # Execute
    with LocalFederation(
        home=tmp_path / "flwr", simulation=True, threads=1
    ) as federation:
        rc = federation.run(
            _faulty_app(tmp_path / "app"),
            run_config,
            {"num-supernodes": 3, "client-resources-num-cpus": 1},
            timeout_s=480,
        )

    # Assert
    assert rc == 0
    records = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    first, second = (r for r in records if r["round"] >= 1)
    assert first["status"] == second["status"] == "ok"
    assert first["partition-id"] == second["partition-id"] == "0 1 2"
    # round 1: vehicle 1 died after two mini-batches; the others' round committed
    assert first["cluster-kept"] == "0 2" and first["cluster-dropped"] == "1"
    assert "died" in first["cluster-dropped-errors"]
    assert first["batches"] == 8 and first["devices"] == 2
    assert second["cluster-kept"] == "0 1 2" and second["cluster-dropped"] == ""
    assert second["batches"] == 12
    assert 1 <= first["cut-layer"] <= 3 and first["modelled-delay-s"] > 0
    assert records[-1]["eval-perplexity"] < records[0]["eval-perplexity"]
    trained = AutoModelForCausalLM.from_pretrained(out / "student")
    assert all(torch.isfinite(p).all() for p in trained.state_dict().values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds ok / rolled back"] == "2 / 0"

"""Check a whole run config before anything starts: files, models, vocabulary, cut, plug-ins.

:class:`~splitkd_flwr.flower.config.RunConfig` checks each value on its own; this module
checks what needs the file system: that the teacher and student directories hold models
that share a vocabulary, that a fixed cut fits the student, that plug-ins import and
that every named file exists. It reads only ``config.json`` files (milliseconds), never
weights, imports neither torch nor transformers, and never prepares the default models, so `splitkd simulate` and the ServerApp
can refuse a bad run before starting a SuperLink, Ray or a teacher's training.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from splitkd_flwr.core.components import component_class
from splitkd_flwr.core.constants import STUDENT_NUM_LAYERS
from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.flower.checkpoint_folder import refuse_a_checkpoint
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.vehicle_data import VehicleData
from splitkd_flwr.simulation.cluster_planning import CLUSTER_SELECTORS, ClusterSelector
from splitkd_flwr.simulation.devices import load_fleet
from splitkd_flwr.simulation.planning import PLANNERS, Fixed, Planner
from splitkd_flwr.simulation.selection import SELECTORS, Selector

# Tokenizer files a Hugging Face checkpoint keeps beside its weights (any one will do).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def check_run(config: RunConfig, explicit: Collection[str] = ()) -> None:
    """Raise ConfigError naming the first key whose value cannot work.

    Parameters
    ----------
    config : RunConfig
        The run's config (each value already checked on its own).
    explicit : Collection[str]
        Keys the user set: a ``cut-layer`` the user gave is checked against the student
        even when the planner plans its own cut; the default one only for ``fixed``.
    """
    _check_files(config)
    if not config.resume:
        refuse_a_checkpoint(Path(config.output_dir).expanduser())
    component_class(config.selector, Selector, SELECTORS)
    planner = component_class(config.planner, Planner, PLANNERS)
    if config.cluster_size > 1:
        component_class(config.cluster_selector, ClusterSelector, CLUSTER_SELECTORS)
    teacher = _model_config(config.teacher, "teacher")
    # KOALA's `student` names one small model per architecture, comma-separated.
    names = (
        [n.strip() for n in config.student.split(",") if n.strip()] or ["default"]
        if config.mode == "koala"
        else [config.student]
    )
    students = [_model_config(name, "student") for name in names]
    for student in students:
        if teacher is not None and student is not None:
            if teacher["vocab_size"] != student["vocab_size"]:
                raise ConfigError(
                    f"teacher and student vocabularies differ (teacher vocab_size "
                    f"{teacher['vocab_size']}, student {student['vocab_size']}); "
                    "distillation needs one shared vocabulary"
                )
    student = students[0]
    layers = STUDENT_NUM_LAYERS if student is None else _num_layers(student)
    if (
        issubclass(planner, Fixed) or "cut-layer" in explicit
    ) and not 1 <= config.cut_layer < layers:
        raise ConfigError(
            f"cut-layer must be in 1..{layers - 1} (the student has {layers} blocks), "
            f"got {config.cut_layer}"
        )
    if config.device_private_layers > layers - 2:
        raise ConfigError(
            f"device-private-layers must be at most {layers - 2} (the student has "
            f"{layers} blocks and every cut must lie above the private layers), got "
            f"{config.device_private_layers}"
        )


def _check_files(config: RunConfig) -> None:
    files = {
        "eval-data": "" if config.eval_data == "builtin" else config.eval_data,
        "scenario-fleet": config.scenario_fleet,
        "data-plane-certfile": config.data_plane_certfile,
        "data-plane-keyfile": config.data_plane_keyfile,
    }
    for key, path in files.items():
        if path and not Path(path).expanduser().exists():
            raise ConfigError(f"{key}: {path!r} does not exist")
    if config.scenario_fleet:
        load_fleet(Path(config.scenario_fleet).expanduser())
    vehicle_data = VehicleData.from_run_config(config.to_run_config())
    if vehicle_data is not None:
        vehicle_data.check()


def _model_config(spec: str, key: str) -> dict[str, Any] | None:
    """The ``config.json`` of a user's model directory (None for ``default``), checked for use.

    Read as JSON, not with transformers (whose import alone takes seconds); the model type
    is checked when the model loads, at the start of the ServerApp.
    """
    if spec == "default":
        return None
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "holds no config.json"
        raise ConfigError(
            f"{key}: {spec!r} {what} (give a save_pretrained directory or 'default')"
        )
    try:
        model_config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: cannot read {path / 'config.json'}: {err}") from err
    for field in ("vocab_size", "model_type"):
        if field not in model_config:
            raise ConfigError(f"{key}: {path / 'config.json'} has no {field!r}")
    if key == "teacher" and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ConfigError(
            f"teacher: {spec!r} holds no tokenizer (the teacher's directory must hold it)"
        )
    return model_config


def _num_layers(model_config: dict[str, Any]) -> int:
    """Decoder blocks of a ``config.json`` (GPT-2 calls them ``n_layer``)."""
    for field in ("num_hidden_layers", "n_layer"):
        if isinstance(model_config.get(field), int):
            return model_config[field]
    raise ConfigError("student: its config.json names no number of layers")

"""The device's private layers (``device-private-layers``): kept in its cache dir, never sent.

The device trains its student's input embeddings and blocks < m like the rest of its
side, but uploads only blocks m..cut-1; the trained private tensors live in
``private-layers-run<run_id>.safetensors`` under the node's cache dir between rounds. The
first round of a run on a device starts them from ``private-init`` (the initial weights
the server sends, the only copy it has), plus the device's own secret noise with
``private-init-noise``. The file is per run: a new run (or a resumed
one, which Flower gives a new run id) starts again from the initial weights rather than
reusing another run's training.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from splitkd_flwr.core.errors import ConfigError, ModelError
from splitkd_flwr.split.partition import check_weights

logger = logging.getLogger(__name__)


def min_cut_layer(private_layers: int) -> int:
    """The shallowest cut a round may use: the private layers must lie below the cut."""
    return private_layers + 1


def check_plan_cut(cut_layer: int, private_layers: int, planner: str) -> None:
    """Refuse (before the round) a planned cut that would put a private layer on the server.

    Built-in planners never plan one (they get :func:`min_cut_layer`); a plug-in planner
    that ignores ``min_cut_layer`` is stopped here.
    """
    if cut_layer < min_cut_layer(private_layers):
        raise ConfigError(
            f"planner {planner!r} chose cut {cut_layer}, but device-private-layers = "
            f"{private_layers} needs a cut > {private_layers} (the device's private "
            "layers never leave it); give the planner a `min_cut_layer` argument"
        )


def private_path(cache_dir: Path, run_id: int) -> Path:
    """Where this run's private layers of a device live."""
    return Path(cache_dir) / f"private-layers-run{run_id}.safetensors"


def load_private(
    cache_dir: Path,
    run_id: int,
    initial: dict[str, torch.Tensor] | None,
    noise: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The device's own private layers, or ``initial`` the first time in this run.

    The server sends ``initial`` (``private-init``) only until the device has committed a
    round of this run; after that it is None and the device's own file must exist. With
    ``noise`` the first time starts from :func:`perturbed` initial weights.

    Raises
    ------
    ModelError
        A stored file does not match ``initial``'s names and shapes, or the device has no
        file and the server sent no initial weights (its cache dir was cleared mid-run:
        the round fails, and the server sends ``private-init`` with the next one).
    """
    path = private_path(cache_dir, run_id)
    if not path.exists():
        if initial is None:
            raise ModelError(
                f"device-private-layers: this device holds no private layers for run "
                f"{run_id} ({path} is missing) and the server sent no private-init"
            )
        logger.info("private layers start from the initial weights (%s)", path)
        return perturbed(initial, noise) if noise else initial
    own = load_file(str(path))
    if initial is not None:
        check_weights(initial, own, f"private layers in {path}")
    return own


def perturbed(
    initial: dict[str, torch.Tensor], noise: float
) -> dict[str, torch.Tensor]:
    """``initial`` plus Gaussian noise of ``noise`` times each tensor's RMS.

    The seed comes from the operating system and is never stored or sent: the server,
    which holds ``initial``, does not hold the device's starting point (it knows
    ``noise``, so an attacker may still train for it; the audit's attacks do not).
    """
    generator = torch.Generator().manual_seed(secrets.randbits(63))
    out = {}
    for name, tensor in initial.items():
        value = tensor.detach().float()
        rms = value.pow(2).mean().sqrt()
        jitter = torch.randn(value.shape, generator=generator) * (noise * rms)
        out[name] = (value + jitter).to(tensor.dtype)
    return out


def save_private(cache_dir: Path, run_id: int, state: dict[str, torch.Tensor]) -> None:
    """Store the trained private layers (host memory, contiguous) for the next round."""
    path = private_path(cache_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(host, str(path))


def write_private_note(student_dir: Path, names: list[str]) -> None:
    """Say, beside the server's saved student, which of its tensors are only initial weights."""
    lines = [
        "# Private device layers",
        "",
        "This run used `device-private-layers`: the devices trained these tensors and",
        "kept them; this checkpoint holds their INITIAL weights only (each device's",
        "deployed student, `deployed-student` in its cache dir, holds its own).",
        "",
        *(f"- `{name}`" for name in names),
        "",
    ]
    (student_dir / "PRIVATE-LAYERS.md").write_text("\n".join(lines))

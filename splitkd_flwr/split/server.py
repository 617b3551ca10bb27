"""The server's side of split KD across rounds: the global student, its optimizer, rollback."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel

from splitkd_flwr.core.errors import ModelError
from splitkd_flwr.split.lora import LoraSpec, add_lora, plain_key, plain_state_dict
from splitkd_flwr.split.models import num_layers
from splitkd_flwr.split.partition import (
    ServerPart,
    check_weights,
    device_param_names,
    partition,
    server_param_names,
)
from splitkd_flwr.split.placement import module_device, to_device, to_host
from splitkd_flwr.split.step import LossFn, ServerStepResult, Smashed, server_step


class SplitServer:
    """The global student and the frozen teacher, trained one split round at a time.

    One AdamW holds every trainable student parameter for the whole run; in a round only
    the server-side ones get gradients (the optimizer skips parameters without one), so
    the moments of a block survive rounds in which the cut moves below or above it.

    With a ``lora`` spec the student gets peft LoRA adapters and only they train: the
    device state a round sends and receives is the adapters below the cut. With an
    ``autocast_dtype`` (bf16-mixed) the server's forward runs under autocast while the
    trainable weights and the optimizer's moments stay fp32.

    A round is ``begin_round`` -> ``step`` per mini-batch -> ``commit`` (the device's
    weights) or ``rollback`` (everything exactly as before ``begin_round``).

    With ``private_layers = m`` the device keeps the student's input embeddings and
    blocks 0..m-1 to itself: they are neither sent nor committed, so the global student
    keeps their initial weights (``private_names``).
    """

    def __init__(
        self,
        teacher: PreTrainedModel,
        student: PreTrainedModel,
        loss_fn: LossFn,
        lr: float,
        *,
        lora: LoraSpec | None = None,
        autocast_dtype: torch.dtype | None = None,
        private_layers: int = 0,
    ) -> None:
        self.teacher = teacher
        self.student = student
        self.loss_fn = loss_fn
        self.autocast_dtype = autocast_dtype
        # checks the pair, unties the student, freezes the teacher
        partition(teacher, student, 1)
        if lora is not None:
            add_lora(student, lora)
        self.lora = lora
        self.private_layers = private_layers
        self.device = module_device(student)
        trainable = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=lr)
        self.cut_layer: int | None = None
        self._part: ServerPart | None = None
        self._snapshot: tuple[dict[str, torch.Tensor], dict] | None = None

    def device_state(self, cut_layer: int) -> dict[str, torch.Tensor]:
        """The trainable student tensors a device needs for ``cut_layer``, on the host.

        Embeddings and blocks below the cut; with LoRA only their adapters (the frozen
        base is provisioned once, see ``device_base_state``).
        """
        state = self.student.state_dict()
        names = self.device_names(cut_layer)
        return {name: to_host(state[name].detach()).clone() for name in names}

    def device_base_state(self) -> dict[str, torch.Tensor]:
        """The frozen base weights any cut may put on a device (LoRA only; else empty).

        Plain keys (no peft names); everything below the last block, on the host.
        """
        if self.lora is None:
            return {}
        lower = device_param_names(self.student, num_layers(self.student) - 1)
        wanted = {plain_key(name) for name in lower} - {None}
        base = plain_state_dict(self.student, merge_adapters=False)
        return {name: to_host(base[name]).contiguous() for name in sorted(wanted)}

    def device_names(self, cut_layer: int) -> list[str]:
        """The student's state_dict keys the device trains (and returns) at ``cut_layer``,
        less the private ones."""
        private = set(self.private_names())
        return [n for n in self.device_side_names(cut_layer) if n not in private]

    def device_side_names(self, cut_layer: int) -> list[str]:
        """Every trainable key on the device's side of ``cut_layer``, private ones included."""
        return device_param_names(self.student, cut_layer, trainable_only=True)

    def private_names(self) -> list[str]:
        """The keys the devices keep to themselves (embeddings, blocks < private_layers)."""
        if self.private_layers == 0:
            return []
        return device_param_names(self.student, self.private_layers)

    def private_state(self) -> dict[str, torch.Tensor]:
        """The server's (initial, never updated) copy of the private layers, on the host."""
        state = self.student.state_dict()
        return {
            name: to_host(state[name].detach()).clone() for name in self.private_names()
        }

    def server_names(self, cut_layer: int) -> list[str]:
        """The student's state_dict keys the server trains at ``cut_layer``."""
        return server_param_names(self.student, cut_layer, trainable_only=True)

    def _server_part(self, cut_layer: int) -> ServerPart:
        return partition(self.teacher, self.student, cut_layer)[1]

    def begin_round(self, cut_layer: int) -> None:
        """Snapshot what the round may change, and build the server part at ``cut_layer``."""
        state = self.student.state_dict()
        names = self.server_names(cut_layer)
        self._snapshot = (
            {name: state[name].detach().clone() for name in names},
            copy.deepcopy(self.optimizer.state_dict()),
        )
        self._part = self._server_part(cut_layer)
        self.cut_layer = cut_layer

    @property
    def expected_widths(self) -> tuple[int, int]:
        """``(d_teacher, d_student)``: the last dimension of the smashed tensors."""
        return self.teacher.config.hidden_size, self.student.config.hidden_size

    def step(self, smashed: Smashed) -> ServerStepResult:
        """One server step on one mini-batch of the round (frames in host memory)."""
        if self._part is None:
            raise ModelError("SplitServer.step called outside a round")
        on_device = Smashed(
            **{k: to_device(v, self.device) for k, v in smashed.tensors().items()}
        )
        result = server_step(
            self._part, on_device, self.optimizer, self.loss_fn, self.autocast_dtype
        )
        result.grad_at_cut = to_host(result.grad_at_cut)
        return result

    def commit(self, device_weights: Mapping[str, torch.Tensor]) -> None:
        """Load the device's updated weights into the global student and end the round.

        Raises ``ModelError`` (and changes nothing) if the weights are not exactly the
        trainable device side of the open round's cut with the right shapes, or hold
        NaN/inf.
        """
        if self.cut_layer is None:
            raise ModelError("SplitServer.commit called outside a round")
        state = self.student.state_dict()
        names = self.device_names(self.cut_layer)
        expected = {name: state[name] for name in names}
        check_weights(
            expected, device_weights, f"device weights (cut {self.cut_layer})"
        )
        with torch.no_grad():
            for name, tensor in device_weights.items():
                state[name].copy_(tensor)
        self._end_round()

    def rollback(self) -> None:
        """Restore the student and the optimizer to their state at ``begin_round``."""
        if self._snapshot is not None:
            weights, optimizer_state = self._snapshot
            state = self.student.state_dict()
            with torch.no_grad():
                for name, tensor in weights.items():
                    state[name].copy_(tensor)
            self.optimizer.load_state_dict(optimizer_state)
        self._end_round()

    def student_state(self) -> dict[str, torch.Tensor]:
        """The whole student as a plain checkpoint (adapters merged), for saving/deploying."""
        return plain_state_dict(self.student)

    def _end_round(self) -> None:
        self._part = None
        self._snapshot = None
        self.cut_layer = None
        self.optimizer.zero_grad(set_to_none=True)


class TrainsStudent(Protocol):
    """What `server_state` reads: a server holding the global student and its optimizer."""

    student: PreTrainedModel
    optimizer: torch.optim.Optimizer
    cut_layer: int | None


def server_state(server: TrainsStudent) -> dict[str, Any]:
    """The global student and the server optimizer (between rounds), for a checkpoint."""
    if server.cut_layer is not None:
        raise ModelError("a server's state is saved between rounds, not inside one")
    return {
        "student": server.student.state_dict(),
        "optimizer": server.optimizer.state_dict(),
    }


def load_server_state(server: TrainsStudent, state: Mapping[str, Any]) -> None:
    """Restore what `server_state` returned; the names and shapes must match exactly."""
    if server.cut_layer is not None:
        raise ModelError("a server's state is restored between rounds, not inside one")
    current = server.student.state_dict()
    check_weights(current, state["student"], "checkpointed student")
    with torch.no_grad():
        for name, tensor in state["student"].items():
            current[name].copy_(tensor)
    server.optimizer.load_state_dict(state["optimizer"])

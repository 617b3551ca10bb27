"""The server's side of a clustered round: K devices at once, SFLv1-style (one server copy each).

Why SFLv1 (SplitFed v1: a server-side copy per device, averaged at the end) and not SFLv2
(one shared server model that every device's frames step in turn):

- **Exact removal.** A member's frames only ever step its own copy, and the global student
  and optimizer are untouched until :meth:`ClusterServer.commit`. A device that fails
  mid-round is removed by leaving its copy (and its device weights) out of the average: the
  steps its frames caused are discarded with the copy, and nothing the other members
  computed depended on them. In SFLv2 a failed device's frames would already have moved the
  shared weights the other members' later gradients were computed with; removing it
  exactly would mean re-running the round.
- **The unsplit step.** With SGD and one local step each, the token-weighted average of the
  copies is one step on the concatenated batch (tests/split/test_cluster.py); SFLv2's
  sequential steps are not.
- The price: K copies of the server-side student and its optimizer state for the round.

Batching: the teacher is frozen and shared, so frames of several members that wait at the
same time go through the teacher in ONE forward (``step_many``); each member's student
part then runs on its own copy with its own optimizer. The teacher is most of the server's
work (an 8B teacher against the student's upper layers), so that is where batching pays;
the students' steps cannot be merged without merging their optimizers.

Optimizer: each copy's optimizer starts from the global optimizer's state for those
parameters; at commit the global state becomes the token-weighted average of the copies'
(AdamW's moments and step count, averaged elementwise). With SGD this is exact; with AdamW
K independent steps then an average is not one AdamW step on the union (as in FedAvg).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call
from transformers import PreTrainedModel

from splitkd_flwr.core.errors import ModelError, SplitKDError
from splitkd_flwr.split.lora import plain_state_dict
from splitkd_flwr.split.partition import (
    ServerPart,
    check_weights,
    device_param_names,
    partition,
)
from splitkd_flwr.split.step import (
    LossFn,
    ServerStepResult,
    Smashed,
    _check_finite,
    _unpack_loss,
)

MakeOptimizer = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


@dataclass
class _Member:
    """One device's server-side copy for the round."""

    params: dict[str, torch.Tensor]  # segment parameter name -> this member's leaf
    optimizer: torch.optim.Optimizer
    frames: int = 0


class ClusterServer:
    """The global student and the frozen teacher, trained by clusters of devices.

    A round is ``begin_round(cut, members)`` -> ``step`` / ``step_many`` per frame ->
    ``commit({member: (device_weights, tokens)})`` or ``rollback()``. Nothing global
    changes before ``commit``.

    Parameters
    ----------
    make_optimizer : callable, optional
        Builds an optimizer over a list of tensors (default AdamW at ``lr``); used for the
        global optimizer and for every member's copy.
    """

    def __init__(
        self,
        teacher: PreTrainedModel,
        student: PreTrainedModel,
        loss_fn: LossFn,
        lr: float,
        make_optimizer: MakeOptimizer | None = None,
    ) -> None:
        self.teacher, self.student, self.loss_fn = teacher, student, loss_fn
        # checks the pair, unties the student, freezes the teacher
        partition(teacher, student, 1)
        self.make_optimizer = make_optimizer or (
            lambda params: torch.optim.AdamW(params, lr=lr)
        )
        self.optimizer = self.make_optimizer(student.parameters())
        self.cut_layer: int | None = None
        self._part: ServerPart | None = None
        self._members: dict[int, _Member] = {}

    @property
    def expected_widths(self) -> tuple[int, int]:
        """``(d_teacher, d_student)``: the last dimension of the smashed tensors."""
        return self.teacher.config.hidden_size, self.student.config.hidden_size

    def device_state(self, cut_layer: int) -> dict[str, torch.Tensor]:
        """The student tensors a device needs for ``cut_layer`` (embeddings, blocks below it)."""
        state = self.student.state_dict()
        return {
            name: state[name].detach().clone()
            for name in device_param_names(self.student, cut_layer)
        }

    def student_state(self) -> dict[str, torch.Tensor]:
        """The whole global student as a plain checkpoint, for saving and deploying."""
        return plain_state_dict(self.student)

    def begin_round(self, cut_layer: int, members: Sequence[int]) -> None:
        """Give each member a copy of the server side at ``cut_layer`` and of its optimizer state."""
        if not members or len(set(members)) != len(members):
            raise ModelError(f"a cluster round needs distinct members, got {members}")
        self._part = partition(self.teacher, self.student, cut_layer)[1]
        self.cut_layer = cut_layer
        self._members = {}
        for member in members:
            params = {
                name: p.detach().clone().requires_grad_(True)
                for name, p in self._part.student.named_parameters()
            }
            optimizer = self.make_optimizer(list(params.values()))
            for name, p in self._part.student.named_parameters():
                if p in self.optimizer.state:
                    optimizer.state[params[name]] = copy.deepcopy(
                        self.optimizer.state[p]
                    )
            self._members[member] = _Member(params, optimizer)

    @property
    def members(self) -> list[int]:
        """The open round's members."""
        return list(self._members)

    def step(self, member: int, smashed: Smashed) -> ServerStepResult:
        """One server step of ``member`` on one of its frames."""
        (result,) = self.step_many([(member, smashed)])
        if isinstance(result, Exception):
            raise result
        return result

    def step_many(
        self, frames: Sequence[tuple[int, Smashed]]
    ) -> list[ServerStepResult | SplitKDError]:
        """Frames of several members at once: one teacher forward, then each copy's step.

        Returns per frame its result, or the error that frame's step raised (the other
        frames' steps stand: each member only touches its own copy).
        """
        if self._part is None:
            raise ModelError("ClusterServer.step_many called outside a round")
        unknown = [m for m, _ in frames if m not in self._members]
        if unknown:
            raise ModelError(f"frames from devices outside the round: {unknown}")
        teacher_logits = self._teacher_logits([s for _, s in frames])
        results: list[ServerStepResult | SplitKDError] = []
        for (member, smashed), logits in zip(frames, teacher_logits):
            try:
                results.append(
                    self._student_step(self._members[member], smashed, logits)
                )
            except SplitKDError as err:
                results.append(err)
        return results

    def _teacher_logits(self, frames: Sequence[Smashed]) -> list[torch.Tensor]:
        """The teacher on every frame; one forward where the frames' shapes allow it."""
        assert self._part is not None
        shapes = {tuple(s.teacher_embeds.shape[1:]) for s in frames}
        dtypes = {s.teacher_embeds.dtype for s in frames}
        if len(frames) == 1 or len(shapes) > 1 or len(dtypes) > 1:
            return [
                self._part.teacher_logits(s.teacher_embeds, s.attention_mask)
                for s in frames
            ]
        logits = self._part.teacher_logits(
            torch.cat([s.teacher_embeds for s in frames]),
            torch.cat([s.attention_mask for s in frames]),
        )
        return list(logits.split([s.teacher_embeds.shape[0] for s in frames]))

    def _student_step(
        self, member: _Member, smashed: Smashed, teacher_logits: torch.Tensor
    ) -> ServerStepResult:
        assert self._part is not None
        segment = self._part.student
        # A fresh leaf: the server's graph ends at the cut; its gradient is what goes back.
        hidden = smashed.student_hidden.detach().requires_grad_(True)  # (B, T, d_s)
        dtype = next(iter(member.params.values())).dtype
        student_logits = functional_call(
            segment, member.params, (hidden.to(dtype), smashed.attention_mask)
        )  # (B, T, V)
        loss, terms = _unpack_loss(
            self.loss_fn(student_logits, teacher_logits, smashed.labels)
        )
        member.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _check_finite(loss, hidden.grad)
        member.optimizer.step()
        member.frames += 1
        return ServerStepResult(loss=loss.item(), terms=terms, grad_at_cut=hidden.grad)

    def check_device_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Raise ``ModelError`` unless ``weights`` are exactly the device side of the round's
        cut (names, shapes, finite values)."""
        if self.cut_layer is None:
            raise ModelError(
                "ClusterServer.check_device_weights called outside a round"
            )
        state = self.student.state_dict()
        expected = {
            n: state[n] for n in device_param_names(self.student, self.cut_layer)
        }
        check_weights(expected, weights, f"device weights (cut {self.cut_layer})")

    def commit(
        self, kept: Mapping[int, tuple[Mapping[str, torch.Tensor], float]]
    ) -> None:
        """Average the kept members (server copies, device weights, optimizer state) by tokens.

        ``kept`` maps member -> (its device-side weights, its tokens). Members of the round
        left out are removed exactly: nothing of theirs enters the global student. Raises
        ``ModelError`` (and changes nothing) on an unknown member, no tokens, or device
        weights that are not exactly the device side of the round's cut.
        """
        if self.cut_layer is None or self._part is None:
            raise ModelError("ClusterServer.commit called outside a round")
        unknown = [m for m in kept if m not in self._members]
        if unknown or not kept:
            raise ModelError(f"cannot commit members {list(kept)} of {self.members}")
        total = float(sum(tokens for _, tokens in kept.values()))
        if not total > 0:
            raise ModelError("the kept members trained on no tokens")
        state = self.student.state_dict()
        expected = {
            n: state[n] for n in device_param_names(self.student, self.cut_layer)
        }
        for member, (weights, _) in kept.items():
            check_weights(expected, weights, f"device weights of {member}")
        share = {m: tokens / total for m, (_, tokens) in kept.items()}
        with torch.no_grad():
            for name, p in self._part.student.named_parameters():
                p.copy_(
                    _mean([self._members[m].params[name] for m in kept], share, kept)
                )
                moments = [
                    self._members[m].optimizer.state.get(self._members[m].params[name])
                    for m in kept
                ]
                if all(moments):
                    self.optimizer.state[p] = {
                        key: _mean([s[key] for s in moments], share, kept)
                        for key in moments[0]
                    }
            for name in expected:
                state[name].copy_(_mean([kept[m][0][name] for m in kept], share, kept))
        self._end_round()

    def rollback(self) -> None:
        """Drop the round: the global student and optimizer were never touched."""
        self._end_round()

    def _end_round(self) -> None:
        self._part = None
        self._members = {}
        self.cut_layer = None


def _mean(
    tensors: Sequence[torch.Tensor], share: Mapping[int, float], order: Iterable[int]
) -> torch.Tensor:
    """``sum_k share[k] * tensors[k]`` in float64, in the first tensor's dtype."""
    if not isinstance(tensors[0], torch.Tensor):
        return sum(share[m] * float(t) for m, t in zip(order, tensors))
    out = sum(share[m] * t.detach().to(torch.float64) for m, t in zip(order, tensors))
    return torch.as_tensor(out).to(tensors[0].dtype)

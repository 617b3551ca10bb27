"""Partition a teacher/student pair at a cut layer: a device part and a server part."""

from collections.abc import Iterator, Mapping

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from splitkd_flwr.core.errors import ModelError
from splitkd_flwr.split.adapters import (
    architecture_of,
    check_model_type,
    position_ids_from_mask,
)
from splitkd_flwr.split.models import (
    check_cut_layer,
    check_pair,
    embedding_from_state,
    freeze,
    is_tied,
    num_layers,
    untie_embeddings,
)


class StudentSegment(nn.Module):
    """Student blocks ``[start, stop)``, maybe with embeddings below or the head above.

    The segment holds the student's own modules (no copies): training a segment trains
    the student. Segments compose into any split: ``[0, c)`` with embeddings on the
    device, ``[c, L)`` with the head on the server, or, for a label-private U-shape,
    ``[c, L)`` alone on the server and an empty ``[L, L)`` with the head on the device.

    Parameters
    ----------
    student : PreTrainedModel
        The whole student (untied when the head and embeddings go to different parts).
    start, stop : int
        Block range, ``0 <= start <= stop <= L``.
    embed : bool
        Whether the segment starts from token ids (holds the embeddings).
    head : bool
        Whether the segment ends in logits (holds the final norm and LM head).
    """

    def __init__(
        self,
        student: PreTrainedModel,
        start: int,
        stop: int,
        *,
        embed: bool,
        head: bool,
    ) -> None:
        super().__init__()
        self.arch = architecture_of(student)
        self.config = student.config
        self.start, self.stop = start, stop
        self.inputs = self.arch.input_modules(student) if embed else None
        self.blocks = nn.ModuleList(self.arch.blocks(student)[start:stop])
        self.context = self.arch.context_modules(student)
        self.norm = self.arch.final_norm(student) if head else None
        self.lm_head = student.get_output_embeddings() if head else None
        # Student state_dict prefix of each module trained here, for weight exchange.
        names = {id(module): name for name, module in student.named_modules()}
        self._prefixes = {names[id(module)]: module for module in self.owned_modules()}

    def owned_modules(self) -> Iterator[nn.Module]:
        """Yield the student modules this segment trains (embeddings, blocks, head)."""
        if self.inputs is not None:
            yield from self.inputs.values()
        yield from self.blocks
        if self.norm is not None:
            yield self.norm
            yield self.lm_head

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the segment.

        Parameters
        ----------
        x : torch.Tensor
            Token ids ``(B, T)`` if the segment embeds, else hidden ``(B, T, d)``.
        attention_mask : torch.Tensor
            ``(B, T)``, 1 on real tokens, 0 on padding.

        Returns
        -------
        torch.Tensor
            Logits ``(B, T, V)`` if the segment has the head, else hidden ``(B, T, d)``.
        """
        position_ids = position_ids_from_mask(attention_mask)  # (B, T)
        hidden = x
        if self.inputs is not None:
            hidden = self.arch.embed(self.inputs, x, position_ids)  # (B, T, d)
        kwargs_for = self.arch.block_kwargs(
            self.config, self.context, hidden, attention_mask, position_ids
        )
        for i, block in enumerate(self.blocks, start=self.start):
            hidden = block(hidden, **kwargs_for(i))  # (B, T, d)
        if self.norm is None:
            return hidden
        return self.lm_head(self.norm(hidden))  # (B, T, V)

    def student_state_dict(
        self, *, trainable_only: bool = False
    ) -> dict[str, torch.Tensor]:
        """Return this segment's weights under the student's own state_dict keys.

        With ``trainable_only``, only the parameters that train (the LoRA adapters of a
        LoRA student; everything for full fine-tuning): what a round exchanges.
        """
        state = {}
        for prefix, module in self._prefixes.items():
            keep = {n for n, p in module.named_parameters() if p.requires_grad}
            for key, tensor in module.state_dict().items():
                if not trainable_only or key in keep:
                    state[f"{prefix}.{key}"] = tensor
        return state

    def load_student_state_dict(
        self, state: Mapping[str, torch.Tensor], *, trainable_only: bool = False
    ) -> None:
        """Copy ``state`` (student keys, exactly this segment's) into the weights.

        Raises
        ------
        ModelError
            ``state`` lacks keys of this segment, has others, a wrong shape or NaN/inf.
        """
        check_weights(
            self.student_state_dict(trainable_only=trainable_only),
            state,
            f"segment [{self.start}, {self.stop})",
        )
        for prefix, module in self._prefixes.items():
            n = len(prefix) + 1
            own = {k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")}
            module.load_state_dict(own, strict=not trainable_only)


class DevicePart(nn.Module):
    """What a device runs: teacher input embedding, student embeddings and blocks < c.

    Nothing else of the teacher: for an 8B teacher, one ``(V, d_t)`` table.
    For GPT-2 that table is ``wte``; the teacher adds its positions on the server.
    """

    def __init__(
        self, teacher_embedding: nn.Embedding, student_segment: StudentSegment
    ) -> None:
        super().__init__()
        self.teacher_embedding = freeze(teacher_embedding)
        self.student = student_segment

    @classmethod
    def from_parts(
        cls,
        teacher_embedding: nn.Embedding | torch.Tensor | Mapping[str, torch.Tensor],
        student: PreTrainedModel,
        cut_layer: int,
    ) -> "DevicePart":
        """Build a device part without the teacher's blocks.

        Parameters
        ----------
        teacher_embedding : nn.Embedding | torch.Tensor | Mapping[str, torch.Tensor]
            The teacher's input embedding, its table ``(V, d_t)``, or its state
            ``{"weight": (V, d_t)}`` (see ``models.load_teacher_embedding``).
        student : PreTrainedModel
            The student whose embeddings and first ``cut_layer`` blocks the part shares.
        cut_layer : int
            ``1 <= cut_layer <= L - 1``.
        """
        check_cut_layer(cut_layer, num_layers(student))
        if isinstance(teacher_embedding, torch.Tensor):
            teacher_embedding = embedding_from_state({"weight": teacher_embedding})
        elif not isinstance(teacher_embedding, nn.Embedding):
            teacher_embedding = embedding_from_state(teacher_embedding)
        vocab_t, vocab_s = teacher_embedding.num_embeddings, student.config.vocab_size
        if vocab_t != vocab_s:
            raise ModelError(
                "Teacher and student vocabularies differ: teacher embedding has "
                f"{vocab_t} rows, student vocab_size {vocab_s}."
            )
        untie_embeddings(student)
        lower = StudentSegment(student, 0, cut_layer, embed=True, head=False)
        return cls(teacher_embedding, lower)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(teacher_embeds (B, T, d_t), student_hidden (B, T, d_s))``."""
        with torch.no_grad():
            teacher_embeds = self.teacher_embedding(input_ids)  # (B, T, d_t)
        student_hidden = self.student(input_ids, attention_mask)  # (B, T, d_s)
        return teacher_embeds, student_hidden

    def student_parameters(self) -> Iterator[nn.Parameter]:
        """Return the trainable (student) parameters, for the device optimizer."""
        return (p for p in self.student.parameters() if p.requires_grad)


class ServerPart(nn.Module):
    """What the server runs: student blocks >= c, norm and head; the frozen teacher.

    The teacher is called with the device's embedding output (``inputs_embeds``), so its
    own forward applies its positions, masks and scaling; its input table is kept only
    because a tied teacher's LM head is that table.
    """

    def __init__(
        self, teacher: PreTrainedModel, student_segment: StudentSegment
    ) -> None:
        super().__init__()
        self.teacher = freeze(teacher)
        self.student = student_segment

    def forward(
        self,
        teacher_embeds: torch.Tensor,
        student_hidden: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(student_logits (B, T, V), teacher_logits (B, T, V))``.

        Inputs of another float dtype (a codec's fp16) are cast to each model's own;
        the gradient at ``student_hidden`` then comes back in the dtype it arrived in.
        """
        student_dtype = next(self.student.parameters()).dtype
        student_hidden = student_hidden.to(student_dtype)  # (B, T, d_s)
        student_logits = self.student(student_hidden, attention_mask)  # (B, T, V)
        teacher_logits = self.teacher_logits(teacher_embeds, attention_mask)  # (B,T,V)
        # A teacher sharded over GPUs (teacher-device-map) ends on its last one.
        return student_logits, teacher_logits.to(student_logits.device)

    @torch.no_grad()
    def teacher_logits(
        self, teacher_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Finish the teacher from its embedding output; ``(B, T, V)``, no graph."""
        return self.teacher(
            inputs_embeds=teacher_embeds.to(self.teacher.dtype),
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).logits

    def train(self, mode: bool = True) -> "ServerPart":
        """Set the student segment's mode; the teacher stays in eval mode."""
        self.training = mode
        self.student.train(mode)
        return self

    def student_parameters(self) -> Iterator[nn.Parameter]:
        """Return the trainable (student) parameters, for the server optimizer."""
        return (p for p in self.student.parameters() if p.requires_grad)


def check_weights(
    expected: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    what: str,
) -> None:
    """Raise ``ModelError`` unless ``weights`` has exactly ``expected``'s names and shapes
    and holds only finite values; the one check for weights that crossed the network."""
    if set(weights) != set(expected):
        missing = sorted(set(expected) - set(weights))[:3]
        extra = sorted(set(weights) - set(expected))[:3]
        raise ModelError(
            f"{what} do not match: missing {missing}, unexpected {extra} "
            f"({len(weights)} tensors, {len(expected)} expected)"
        )
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelError(
                f"{what}: {name} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected[name].shape)}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"{what}: {name} holds NaN or inf")


def partition(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    cut_layer: int,
    *,
    server_head: bool = True,
) -> tuple[DevicePart, ServerPart]:
    """Split a teacher/student pair at ``cut_layer``; parts share the models' weights.

    With ``server_head=False`` (u-shape) the server's segment stops after the last block:
    the final norm and the LM head stay with the device.

    The student is untied first if its head and input embedding share a weight (see
    ``models.untie_embeddings``); the teacher is frozen.

    Raises
    ------
    ModelError
        Unsupported architecture or vocabularies that differ.
    CutLayerError
        ``cut_layer`` outside ``1..L-1`` for the student's ``L`` blocks.
    """
    check_pair(teacher, student)
    check_cut_layer(cut_layer, num_layers(student))
    freeze(teacher)
    device = DevicePart.from_parts(teacher.get_input_embeddings(), student, cut_layer)
    top = num_layers(student)
    upper = StudentSegment(student, cut_layer, top, embed=False, head=server_head)
    return device, ServerPart(teacher, upper)


def build_device_student(
    config: PretrainedConfig,
    cut_layer: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    head: bool = False,
) -> PreTrainedModel:
    """Build a student whose embeddings and blocks ``< cut_layer`` alone take memory.

    The rest (upper blocks, norm, LM head) stays on the meta device, so a device with a
    1B student allocates only what it trains, on ``device`` (a Jetson's ``cuda``); with
    ``head`` (the u-shape) the final norm and LM head are allocated too. The allocated weights are uninitialised:
    load the server's with ``DevicePart.student.load_student_state_dict``.

    Raises
    ------
    ModelError
        Unsupported architecture.
    CutLayerError
        ``cut_layer`` outside ``1..L-1``.
    """
    check_model_type(getattr(config, "model_type", None))
    check_cut_layer(cut_layer, int(config.num_hidden_layers))
    with torch.device("meta"):
        student = AutoModelForCausalLM.from_config(config, dtype=dtype)
    untie_embeddings(student)
    arch = architecture_of(student)
    arch.rebuild_context(student)
    lower = StudentSegment(student, 0, cut_layer, embed=True, head=False)
    modules = list(lower.owned_modules())
    if head:  # the u-shape's device also holds the final norm and the LM head
        top = num_layers(student)
        modules += StudentSegment(
            student, top, top, embed=False, head=True
        ).owned_modules()
    for module in modules:
        module.to_empty(device=device)
    # The rotary tables were rebuilt on the CPU; they go where the blocks run.
    for module in lower.context.values():
        module.to(device)
    return student


def device_param_names(
    student: PreTrainedModel, cut_layer: int, *, trainable_only: bool = False
) -> list[str]:
    """Return the student's state_dict keys on the device (embeddings, blocks < c)."""
    lower = _segments(student, cut_layer)[0]
    return list(lower.student_state_dict(trainable_only=trainable_only))


def server_param_names(
    student: PreTrainedModel, cut_layer: int, *, trainable_only: bool = False
) -> list[str]:
    """Return the student's state_dict keys on the server (blocks >= c, norm, head)."""
    upper = _segments(student, cut_layer)[1]
    return list(upper.student_state_dict(trainable_only=trainable_only))


def _segments(
    student: PreTrainedModel, cut_layer: int
) -> tuple[StudentSegment, StudentSegment]:
    check_cut_layer(cut_layer, num_layers(student))
    if is_tied(student):
        raise ModelError(
            "The student's LM head is tied to its input embedding; untie it first "
            "(models.untie_embeddings, done by partition) so each weight has one side."
        )
    lower = StudentSegment(student, 0, cut_layer, embed=True, head=False)
    top = num_layers(student)
    upper = StudentSegment(student, cut_layer, top, embed=False, head=True)
    return lower, upper

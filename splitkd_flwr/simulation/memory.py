"""Memory of one split-KD step per side and per cut: weights, gradients, optimizer, activations.

Beside the cost model (:mod:`splitkd_flwr.simulation.cost`, time and energy), this model
sizes what each side must hold for a cut, so that planners never choose a cut that does
not fit a device or the server. numpy only; every figure is in bytes.

What is counted (per side, for the student blocks it runs):

- weights: trained ones as fp32 master copies (4 B); a frozen LoRA base in bf16 (2 B)
  under ``bf16-mixed``, else fp32; with full fine-tuning under ``bf16-mixed``, autocast
  also caches a bf16 copy (2 B) of every matrix for the step;
- gradients (4 B) and AdamW's two moments (8 B) of the trained parameters only;
- activations saved for backward, per token and block (Llama block, see
  ``ACTIVATION_ELEMENTS``), at 2 B under bf16 autocast and 4 B otherwise; with gradient
  checkpointing only each block's input plus one block's worth;
- the device: the teacher's input-embedding table (V x d_t at the teacher's bytes);
- the server: the whole global student (it keeps every block across rounds), the
  rollback snapshot a round takes of what it may change, the whole frozen teacher, its
  forward's working set and the loss's logits (``LOGIT_COPIES`` fp32-sized copies of
  B x T x V).

In ``u-shape`` (``Workload.split_mode``) the final norm, the LM head and the loss move to
the device: it trains the head (weights, gradients, AdamW moments) and holds the loss's
logits (``LOGIT_COPIES`` copies of B x T x V, counted with its activations) and the
student hidden state the server returns with its gradient; the server trains blocks
``>= cut`` only and holds just the teacher's logits and what its soft labels take
(``SOFT_LABEL_COPIES``).

Not counted: the framework's own footprint (CUDA context, allocator slack), which the
planner's ``MEMORY_HEADROOM`` leaves room for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from splitkd_flwr.core.types import Workload
from splitkd_flwr.simulation.cost import LLAMA_3_1_8B, LLAMA_3_2_1B, ModelShape

GB = 1e9
# Usable share of a profile's memory: the OS (Jetson memory is shared with the CPU), the
# CUDA context and allocator fragmentation take the rest.
MEMORY_HEADROOM = 0.9
# Tensors a Llama block keeps for backward, in units of (d, d_kv, d_ff) per token: the two
# norms' inputs and outputs (4 d), q/k/v after rotary (d + 2 d_kv), attention output (d),
# gate, up, SiLU(gate) and their product (4 d_ff).
ACTIVATION_ELEMENTS = (6, 2, 4)
# Copies of the (B, T, V) logits the KD loss and its backward hold at once, fp32-sized:
# student logits, their fp32 log-softmax, teacher log-softmax, the gradient.
LOGIT_COPIES = 4
# u-shape server: fp32-sized (B, T, V) copies behind the soft labels it sends: the full
# distribution is the teacher's logits as they are; top-k adds their log-softmax and the
# copy with the k kept tokens masked out, whose logsumexp is the tail (split/loss.py).
SOFT_LABEL_COPIES = {"full": 1, "top-k": 3}
FP32_BYTES, HALF_BYTES, ADAMW_MOMENTS = 4, 2, 2
LORA_TARGETS_PER_BLOCK = 7  # q, k, v, o, gate, up, down


@dataclass(frozen=True)
class MemoryEstimate:
    """One side's memory for one cut (bytes; arrays broadcast over cuts)."""

    weights: np.ndarray
    gradients: np.ndarray
    optimizer: np.ndarray
    activations: np.ndarray
    teacher: np.ndarray  # device: the embedding table; server: the whole teacher
    snapshot: np.ndarray | float = 0.0  # server: the rollback copy of a round's state

    @property
    def total(self) -> np.ndarray:
        """Everything at the step's peak."""
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.teacher
            + self.snapshot
        )

    def row(self, index: int) -> dict[str, float]:
        """The figures of one cut (its index), for tables and plans."""
        return {
            "weights": float(self.weights[index]),
            "gradients": float(self.gradients[index]),
            "optimizer": float(self.optimizer[index]),
            "activations": float(self.activations[index]),
            "teacher": float(self.teacher[index]),
            "snapshot": float(
                np.broadcast_to(self.snapshot, self.teacher.shape)[index]
            ),
            "total": float(self.total[index]),
        }


def lora_block_params(shape: ModelShape, rank: int) -> int:
    """Adapter parameters of one block: r (in + out) for each of the 7 projections."""
    d, attn = shape.hidden, shape.heads * shape.head_dim
    kv, ff = shape.kv_heads * shape.head_dim, shape.intermediate
    pairs = [(d, attn), (d, kv), (d, kv), (attn, d), (d, ff), (d, ff), (ff, d)]
    return rank * sum(a + b for a, b in pairs)


class MemoryModel:
    """Per-cut memory of the device side and the server side of a workload.

    Cuts are ``1..L-1`` (index ``cut - 1``), like the cost model's.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.student = ModelShape.from_config(
            workload.student_config
            or {**LLAMA_3_2_1B, "num_hidden_layers": workload.num_student_layers}
        )
        self.teacher = ModelShape.from_config(workload.teacher_config or LLAMA_3_1_8B)
        self.cuts = np.arange(1, self.student.layers)  # (C,)

    def _counts(
        self, blocks: np.ndarray, table_params: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(all, trained) parameters of ``blocks`` student blocks and ``table_params`` more."""
        s, rank = self.student, self.workload.lora_rank
        total = blocks * (s.layer_params + 2 * s.hidden) + table_params
        trained = blocks * lora_block_params(s, rank) if rank > 0 else total
        return np.asarray(total, dtype=float), np.asarray(trained, dtype=float)

    def _weight_bytes(
        self, total: np.ndarray, trained: np.ndarray, matrices: np.ndarray
    ) -> np.ndarray:
        """Stored weights; ``matrices`` are the ones autocast copies to bf16 (full FT)."""
        mixed = self.workload.mixed_precision
        if self.workload.lora_rank > 0:
            base_bytes = HALF_BYTES if mixed else FP32_BYTES
            return total * base_bytes + trained * FP32_BYTES
        return total * FP32_BYTES + (matrices * HALF_BYTES if mixed else 0.0)

    def _activations(self, blocks: np.ndarray) -> np.ndarray:
        """What ``blocks`` blocks keep for backward, plus the hidden state at the cut."""
        w, s = self.workload, self.student
        act_bytes = HALF_BYTES if w.mixed_precision else FP32_BYTES
        a, b, c = ACTIVATION_ELEMENTS
        kv = s.kv_heads * s.head_dim
        per_block = a * s.hidden + b * kv + c * s.intermediate  # elements per token
        if w.gradient_checkpointing:
            stored = blocks * s.hidden + np.minimum(blocks, 1) * per_block
        else:
            stored = blocks * per_block
        return np.asarray(
            w.batch_size * w.seq_len * (stored + s.hidden) * act_bytes, dtype=float
        )

    def device(self) -> MemoryEstimate:
        """The device side per cut: embeddings and blocks ``< cut``, the teacher table.

        The device's optimizer is fresh each round and holds its side only.
        """
        w, s, t, cuts = self.workload, self.student, self.teacher, self.cuts
        # u-shape: the LM head (a matrix autocast copies) and the final norm
        head_matrix = s.vocab * s.hidden if w.ushape else 0
        head = head_matrix + s.hidden if w.ushape else 0
        total, trained = self._counts(cuts, s.vocab * s.hidden + head)
        table = t.vocab * t.hidden * w.teacher_bytes_per_element
        activations = self._activations(cuts)
        if w.ushape:
            tokens = w.batch_size * w.seq_len
            # the loss's logits, and the returned hidden state at the top with its gradient
            activations = activations + tokens * FP32_BYTES * (
                LOGIT_COPIES * s.vocab + 2 * s.hidden
            )
        return MemoryEstimate(
            weights=self._weight_bytes(
                total, trained, cuts * s.layer_params + head_matrix
            ),
            gradients=trained * FP32_BYTES,
            optimizer=trained * FP32_BYTES * ADAMW_MOMENTS,
            activations=activations,
            teacher=np.full(cuts.shape, float(table)),
        )

    def server(self) -> MemoryEstimate:
        """The server side per cut: the whole global student, grads and AdamW moments of
        blocks ``>= cut``, norm and head, the round's rollback snapshot of those, and the
        whole frozen teacher with its forward's working set and the loss's logits."""
        w, s, t, cuts = self.workload, self.student, self.teacher, self.cuts
        upper = s.layers - cuts
        head = s.vocab * s.hidden + s.hidden
        whole, whole_trained = self._counts(
            np.full(cuts.shape, s.layers), head + s.vocab * s.hidden
        )
        # u-shape: the head trains (and its logits live) on the device
        _, trained = self._counts(upper, 0 if w.ushape else head)
        teacher_params = (
            t.layers * (t.layer_params + 2 * t.hidden) + 2 * t.vocab * t.hidden
        )
        tokens = w.batch_size * w.seq_len
        working = tokens * (sum(ACTIVATION_ELEMENTS) * t.hidden + t.intermediate)
        copies = LOGIT_COPIES
        if w.ushape:
            copies = SOFT_LABEL_COPIES["top-k" if w.teacher_top_k else "full"]
        logits = copies * tokens * s.vocab * FP32_BYTES
        teacher = (teacher_params + working) * w.teacher_bytes_per_element + logits
        moments = trained * FP32_BYTES * ADAMW_MOMENTS
        return MemoryEstimate(
            weights=self._weight_bytes(
                whole,
                whole_trained,
                upper * s.layer_params + (0 if w.ushape else s.vocab * s.hidden),
            ),
            gradients=trained * FP32_BYTES,
            optimizer=moments,
            activations=self._activations(upper),
            teacher=np.full(cuts.shape, float(teacher)),
            # begin_round copies the server side's trained weights and the moments
            snapshot=trained * FP32_BYTES + moments,
        )

    def weights_bytes_per_round(self) -> np.ndarray:
        """What one direction of a round's Flower message carries per cut: the device's
        trained tensors in fp32 (LoRA: its adapters; else embeddings and blocks, and in
        u-shape the final norm and LM head)."""
        s = self.student
        if self.workload.lora_rank > 0:
            return self.cuts * lora_block_params(s, self.workload.lora_rank) * 4.0
        head = s.vocab * s.hidden + s.hidden if self.workload.ushape else 0
        return (
            self.cuts * (s.layer_params + 2 * s.hidden) + s.vocab * s.hidden + head
        ) * 4.0


def fits(total_bytes: np.ndarray, memory_bytes: float) -> np.ndarray:
    """Whether each figure fits ``memory_bytes`` less the headroom (0: unknown, fits)."""
    if memory_bytes <= 0:
        return np.ones(np.shape(total_bytes), dtype=bool)
    return np.asarray(total_bytes) <= MEMORY_HEADROOM * memory_bytes

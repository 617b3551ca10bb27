"""Split step vs unsplit step on CPU: time ratio per cut, bytes each split step sends.

For the default tiny teacher/student (``splitkd_flwr.default_models.configs``) and a right-padded
random batch of the default size, one process times the split step (device forward ->
server step -> device backward, both optimizers) and the unsplit reference step,
alternating them, and prints the median of each and of their per-pair ratio::

    .venv/bin/python bench/split_step.py --cuts 1 4 8 12 15 --repeats 20

Bytes per step: the smashed data (teacher embeddings + student hidden state + mask +
labels) up, the gradient at the cut down; float tensors at fp32 and at fp16, the mask
and labels as int64 (what the data loader makes; a codec may narrow them).
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from splitkd_flwr.data.loading import DEFAULT_SEQ_LEN
from splitkd_flwr.default_models.configs import (
    DEFAULT_BATCH_SIZE,
    PAD_ID,
    default_student_config,
    default_teacher_config,
)
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.models import load_causal_lm, num_layers
from splitkd_flwr.split.partition import partition
from splitkd_flwr.split.step import (
    Smashed,
    device_backward,
    device_forward,
    reference_step,
    server_step,
)

LR = 1e-3  # AdamW on both sides, as a real round would
VOCAB_SIZE = 1024  # the built-in tokenizer's (splitkd_flwr.data.tokenizer)
PHASES = ("device fwd", "server", "device bwd")


def _batch(
    batch_size: int, seq_len: int, vocab: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens, right-padded from lengths in ``[seq_len / 2, seq_len]``."""
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,))
    mask = (torch.arange(seq_len) < lengths[:, None]).long()  # (B, T)
    input_ids = torch.randint(PAD_ID + 4, vocab, (batch_size, seq_len))  # (B, T)
    return input_ids.masked_fill(mask == 0, PAD_ID), mask


def _time_s(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _split_step(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    cut_layer: int,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn: KDLoss,
) -> tuple[
    Callable[[], None], dict[str, list[float]], list[tuple[Smashed, torch.Tensor]]
]:
    """Return a split step at ``cut_layer``, its phase times and its last payloads."""
    device_part, server_part = partition(teacher, student, cut_layer)
    device_optimizer = torch.optim.AdamW(device_part.student_parameters(), lr=LR)
    server_optimizer = torch.optim.AdamW(server_part.student_parameters(), lr=LR)
    phases_s: dict[str, list[float]] = {name: [] for name in PHASES}
    payloads: list[tuple[Smashed, torch.Tensor]] = []

    def step() -> None:
        t0 = time.perf_counter()
        smashed, hidden = device_forward(device_part, *batch)
        t1 = time.perf_counter()
        result = server_step(server_part, smashed, server_optimizer, loss_fn)
        t2 = time.perf_counter()
        device_backward(hidden, result.grad_at_cut, device_optimizer)
        t3 = time.perf_counter()
        for name, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            phases_s[name].append(seconds)
        payloads[:] = [(smashed, result.grad_at_cut)]

    return step, phases_s, payloads


def _bytes_row(
    smashed: Smashed, grad: torch.Tensor, dtype: torch.dtype
) -> dict[str, int]:
    def size(t: torch.Tensor) -> int:
        if t.is_floating_point():
            return t.numel() * torch.finfo(dtype).bits // 8
        return t.numel() * t.element_size()

    row = {name: size(t) for name, t in smashed.tensors().items()}
    row["smashed"] = sum(row.values())
    row["gradient"] = size(grad)
    return row


def main() -> None:
    """Parse arguments, time the steps, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=int, nargs="+", default=[1, 4, 8, 12, 15])
    parser.add_argument("--repeats", type=int, default=20, help="timed pairs per cut")
    parser.add_argument("--warmup", type=int, default=3, help="untimed pairs per cut")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN)
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    teacher = load_causal_lm(default_teacher_config(args.vocab_size))
    student = load_causal_lm(default_student_config(args.vocab_size))
    reference = load_causal_lm(default_student_config(args.vocab_size))
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=LR)
    loss_fn = KDLoss()
    batch = _batch(args.batch_size, args.seq_len, args.vocab_size)
    print(
        f"teacher {sum(p.numel() for p in teacher.parameters()) / 1e6:.2f} M params, "
        f"student {sum(p.numel() for p in student.parameters()) / 1e6:.2f} M params "
        f"({num_layers(student)} layers), batch {args.batch_size} x {args.seq_len}, "
        f"vocab {args.vocab_size}, {args.threads} thread(s), median of {args.repeats}"
    )

    def unsplit() -> None:
        reference_step(teacher, reference, *batch, reference_optimizer, loss_fn)

    header = f"{'cut':>4} {'split ms':>9} {'unsplit ms':>11} {'ratio':>6}"
    print("\n" + header + "".join(f" {name + ' ms':>13}" for name in PHASES))
    for cut_layer in args.cuts:
        split, phases_s, payloads = _split_step(
            teacher, student, cut_layer, batch, loss_fn
        )
        for _ in range(args.warmup):
            split(), unsplit()
        for times in phases_s.values():
            times.clear()
        # Alternate the two so that load from other processes hits both alike.
        pairs = [(_time_s(split), _time_s(unsplit)) for _ in range(args.repeats)]
        split_ms = statistics.median(s for s, _ in pairs) * 1e3
        unsplit_ms = statistics.median(u for _, u in pairs) * 1e3
        ratio = statistics.median(s / u for s, u in pairs)
        phase_ms = [statistics.median(phases_s[name]) * 1e3 for name in PHASES]
        print(
            f"{cut_layer:>4} {split_ms:>9.1f} {unsplit_ms:>11.1f} {ratio:>6.2f}"
            + "".join(f" {ms:>13.1f}" for ms in phase_ms)
        )

    # The bytes do not depend on the cut: hidden states are (B, T, d) at every block.
    print(f"\nbytes per split step (batch {args.batch_size} x {args.seq_len})")
    smashed, grad = payloads[0]
    names = [*smashed.tensors(), "smashed", "gradient"]
    print(f"{'floats':>6} " + " ".join(f"{n:>15}" for n in names))
    for label, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        row = _bytes_row(smashed, grad, dtype)
        print(f"{label:>6} " + " ".join(f"{row[n]:>15,}" for n in names))


if __name__ == "__main__":
    main()

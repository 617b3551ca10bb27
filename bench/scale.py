"""One split-KD step at real scale: Llama-3.2-1B student, Llama-3.1-8B teacher shapes.

Random weights from configs built in code (no downloads); bf16 teacher, LoRA student
under bf16-mixed; teacher and student on ``--device``. Times the split step (device
forward, server step, device backward, in one process: no network) and the unsplit
step (``reference_step``) on the same models, and reports step time, tokens/s, peak
memory and the split / unsplit time ratio.

    # GPU (the issue's setting): batch 4 x 512, LoRA r64, the whole 8B teacher
    python bench/scale.py --device cuda --batch-size 4 --seq-len 512
    # CPU (memory-bound machine): a 1-block teacher of the 8B's width and vocabulary
    python bench/scale.py --device cpu --batch-size 1 --seq-len 64 --teacher-layers 1
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from splitkd_flwr.simulation.cost import LLAMA_3_1_8B, LLAMA_3_2_1B
from splitkd_flwr.split.lora import LoraSpec, add_lora
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.models import freeze, load_causal_lm, untie_embeddings
from splitkd_flwr.split.partition import partition
from splitkd_flwr.split.placement import resolve_device
from splitkd_flwr.split.precision import enable_gradient_checkpointing
from splitkd_flwr.split.step import (
    device_backward,
    device_forward,
    reference_step,
    server_step,
)

BF16 = torch.bfloat16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--cut", type=int, default=4)
    parser.add_argument("--teacher-layers", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after 1)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device, "--device")
    torch.manual_seed(0)

    teacher_config = {**LLAMA_3_1_8B, "num_hidden_layers": args.teacher_layers}
    student_config = {**LLAMA_3_2_1B, "use_cache": False}
    with torch.device(device):
        teacher = freeze(load_causal_lm(teacher_config, dtype=BF16))
        student = load_causal_lm(student_config, dtype=BF16)
    untie_embeddings(student)
    add_lora(student, LoraSpec(args.lora_rank, 2.0 * args.lora_rank))
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    loss_fn = KDLoss()
    device_part, server_part = partition(teacher, student, args.cut)
    device_opt = torch.optim.AdamW(device_part.student_parameters(), lr=1e-4)
    server_opt = torch.optim.AdamW(server_part.student_parameters(), lr=1e-4)
    whole_opt = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad], lr=1e-4
    )
    shape = (args.batch_size, args.seq_len)
    ids = torch.randint(3, student.config.vocab_size, shape, device=device)
    mask = torch.ones_like(ids)
    tokens = args.batch_size * args.seq_len

    def split_step() -> None:
        smashed, hidden = device_forward(device_part, ids, mask, BF16)
        result = server_step(server_part, smashed, server_opt, loss_fn, BF16)
        device_backward(hidden, result.grad_at_cut, device_opt)

    def unsplit_step() -> None:
        reference_step(teacher, student, ids, mask, whole_opt, loss_fn, BF16)

    times = {}
    for name, step in (("split", split_step), ("unsplit", unsplit_step)):
        step()  # warm-up (allocator, kernels)
        _sync(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(device)
        times[name] = (time.perf_counter() - started) / args.steps
    peak = _peak_bytes(device)
    what = "peak GPU memory allocated" if device.type == "cuda" else "peak RSS"
    print(
        f"device {device}; student Llama-3.2-1B shapes, LoRA r{args.lora_rank}, "
        f"bf16-mixed; teacher Llama-3.1-8B width/vocab, {args.teacher_layers} of 32 "
        f"blocks, bf16; batch {args.batch_size} x {args.seq_len}, cut {args.cut}"
        + (", gradient checkpointing" if args.gradient_checkpointing else "")
    )
    for name, seconds in times.items():
        print(f"{name:>8} step {seconds:.3f} s, {tokens / seconds:,.1f} tokens/s")
    print(f"split / unsplit step time: {times['split'] / times['unsplit']:.3f}")
    print(f"{what}: {peak / 2**30:.2f} GiB (fits 24 GB: {peak <= 24e9})")


if __name__ == "__main__":
    main()

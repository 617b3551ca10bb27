"""Does the default teacher teach? The default student trained with KD vs with CE only.

    .venv/bin/python bench/kd_vs_ce.py --steps 600 --device 0

Both runs start from the same prepared initial student, see the same mini-batches of one
vehicle's partition of the built-in corpus (non-IID, as in the simulation) in the same
order, and take the unsplit reference step (`split.step.reference_step`, which a split
step equals). KD: ``KDLoss(alpha, temperature)`` against the prepared teacher; CE only:
``alpha = 1``. Prints the held-out perplexity (the built-in eval set, all topics) of the
initial student, the teacher, and both trained students.

Defaults are the ones that teach: forward KL at T = 1. At T = 2, or with reverse KL, the
KD student ended worse than the CE-only one here (see docs/data.md). One torch thread by
default: on a machine whose cores are shared, more threads can be many times slower.
"""

from __future__ import annotations

import argparse
import time

import torch

from splitkd_flwr.data.loading import (
    Examples,
    encode_documents,
    iterate_batches,
    iterate_steps,
)
from splitkd_flwr.data.partition import builtin_split
from splitkd_flwr.data.tokenizer import load_tokenizer
from splitkd_flwr.default_models.configs import DEFAULT_BATCH_SIZE
from splitkd_flwr.default_models.prepare import prepare_default_models
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.models import load_causal_lm
from splitkd_flwr.split.step import reference_step


def train(student_dir, teacher, examples: Examples, loss_fn: KDLoss, args) -> tuple:
    """Train a fresh copy of the initial student; return it and the seconds it took."""
    student = load_causal_lm(student_dir)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr)
    start = time.perf_counter()
    for batch in iterate_steps(examples, args.batch_size, args.steps, seed=args.seed):
        reference_step(teacher, student, **batch, optimizer=optimizer, loss_fn=loss_fn)
    return student, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="steps per run")
    parser.add_argument("--device", type=int, default=0, help="whose data to use")
    parser.add_argument("--num-devices", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--alpha", type=float, default=0.5, help="KD run's CE weight")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--divergence", default="forward-kl")
    parser.add_argument("--eval-examples", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = prepare_default_models(args.cache_dir)
    tokenizer = load_tokenizer(models.tokenizer_dir)
    teacher = load_causal_lm(models.teacher_dir).eval()
    split = builtin_split(args.num_devices, seed=args.seed)
    device_docs = split.devices[args.device]
    train_set = encode_documents([d.text for d in device_docs], tokenizer)
    held_out = encode_documents([d.text for d in split.eval], tokenizer)
    n = args.eval_examples
    held_out = Examples(held_out.input_ids[:n], held_out.attention_mask[:n])
    topics = sorted({d.topic for d in device_docs})
    print(
        f"vehicle {args.device}: {len(device_docs)} documents, {len(train_set)} "
        f"sequences, {len(topics)} of 12 topics; held-out: {len(held_out)} sequences"
    )

    def perplexity(model) -> float:
        return evaluate_lm(model, iterate_batches(held_out, 64))["perplexity"]

    rows = {
        "initial student": perplexity(load_causal_lm(models.student_dir)),
        "teacher": perplexity(teacher),
    }
    kd = f"alpha={args.alpha}, T={args.temperature}, {args.divergence}"
    runs = {
        "student, CE only (alpha=1)": KDLoss(alpha=1.0),
        f"student, KD ({kd})": KDLoss(
            alpha=args.alpha, temperature=args.temperature, divergence=args.divergence
        ),
    }
    for name, loss_fn in runs.items():
        torch.manual_seed(args.seed)
        student, seconds = train(models.student_dir, teacher, train_set, loss_fn, args)
        rows[name] = perplexity(student)
        print(f"  {name}: {args.steps} steps in {seconds:.0f} s")
    print(f"\nheld-out perplexity after {args.steps} steps of batch {args.batch_size}:")
    for name, value in rows.items():
        print(f"  {name:48} {value:10.3f}")


if __name__ == "__main__":
    main()

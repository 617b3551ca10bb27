"""Peak memory of the device and server processes vs the memory model (real shapes, CPU).

Each (side, cut) runs in a fresh process: its peak resident memory (``ru_maxrss``) less
what it held before building anything (torch and the imports) is compared with
``simulation.memory``'s prediction for the same shapes and settings.

    PYTHONPATH=$PWD python bench/memory.py                  # cuts 1, 8, 15, both sides
    PYTHONPATH=$PWD python bench/memory.py --side device --cut 8 --one   # one, in-process

Student: Llama-3.2-1B shapes; teacher: Llama-3.1-8B width and vocabulary with
``--teacher-layers`` blocks (the device needs only the teacher's embedding table; a
whole 8B teacher does not fit this machine's memory budget). Random weights from
configs built in code; LoRA (``--lora-rank``) and bf16-mixed, a bf16 teacher.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from splitkd_flwr.core.types import Workload
from splitkd_flwr.simulation.cost import LLAMA_3_1_8B, LLAMA_3_2_1B
from splitkd_flwr.simulation.memory import MemoryModel


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _configs(teacher_layers: int) -> tuple[dict, dict]:
    student = {**LLAMA_3_2_1B, "tie_word_embeddings": False, "use_cache": False}
    teacher = {**LLAMA_3_1_8B, "num_hidden_layers": teacher_layers, "use_cache": False}
    return student, teacher


def _workload(args: argparse.Namespace) -> Workload:
    student, teacher = _configs(args.teacher_layers)
    return Workload(
        16,
        args.batch_size,
        args.seq_len,
        1,
        student_config=student,
        teacher_config=teacher,
        lora_rank=args.lora_rank,
        mixed_precision=True,
        teacher_bytes_per_element=2,
    )


def _fill(module) -> None:  # noqa: ANN001
    """Touch every allocated weight (untouched pages would not count as resident)."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            if p.device.type != "meta":
                p.normal_(0.0, 0.02)


def measure_device(args: argparse.Namespace) -> int:
    """One device step at ``args.cut``: build, forward, backward with a gradient, step."""
    import torch
    from transformers import AutoConfig

    from splitkd_flwr.split.lora import LoraSpec, add_lora
    from splitkd_flwr.split.partition import DevicePart, build_device_student
    from splitkd_flwr.split.step import device_backward, device_forward

    student_config, teacher_config = _configs(args.teacher_layers)
    config = AutoConfig.for_model(**student_config)
    start = _rss_bytes()
    student = build_device_student(config, args.cut, dtype=torch.bfloat16)
    _fill(student)
    table = torch.empty(
        teacher_config["vocab_size"],
        teacher_config["hidden_size"],
        dtype=torch.bfloat16,
    ).normal_()
    part = DevicePart.from_parts(table, student, args.cut)
    add_lora(student, LoraSpec(args.lora_rank, 2.0 * args.lora_rank))
    optimizer = torch.optim.AdamW(part.student_parameters(), lr=1e-4)
    ids = torch.randint(3, config.vocab_size, (args.batch_size, args.seq_len))
    mask = torch.ones_like(ids)
    for _ in range(2):
        smashed, hidden = device_forward(part, ids, mask, torch.bfloat16)
        device_backward(hidden, torch.randn_like(smashed.student_hidden), optimizer)
    return _peak_bytes() - start


def measure_server(args: argparse.Namespace) -> int:
    """Two server rounds at ``args.cut`` (the second snapshots the first's moments)."""
    import torch

    from splitkd_flwr.split.lora import LoraSpec
    from splitkd_flwr.split.loss import KDLoss
    from splitkd_flwr.split.models import load_causal_lm
    from splitkd_flwr.split.server import SplitServer
    from splitkd_flwr.split.step import Smashed, make_labels

    student_config, teacher_config = _configs(args.teacher_layers)
    start = _rss_bytes()
    teacher = load_causal_lm(teacher_config, dtype=torch.bfloat16)
    student = load_causal_lm(student_config, dtype=torch.bfloat16)
    server = SplitServer(
        teacher,
        student,
        KDLoss(),
        1e-4,
        lora=LoraSpec(args.lora_rank, 2.0 * args.lora_rank),
        autocast_dtype=torch.bfloat16,
    )
    b, t = args.batch_size, args.seq_len
    ids = torch.randint(3, student.config.vocab_size, (b, t))
    mask = torch.ones_like(ids)
    smashed = Smashed(
        teacher_embeds=torch.randn(b, t, teacher.config.hidden_size).bfloat16(),
        student_hidden=torch.randn(b, t, student.config.hidden_size),
        attention_mask=mask,
        labels=make_labels(ids, mask),
    )
    for _ in range(2):
        server.begin_round(args.cut)
        server.step(smashed)
        server.commit(server.device_state(args.cut))
    return _peak_bytes() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["device", "server"], default=None)
    parser.add_argument("--cut", type=int, nargs="*", default=[1, 8, 15])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--teacher-layers", type=int, default=1)
    parser.add_argument("--one", action="store_true", help="measure in this process")
    args = parser.parse_args()
    if args.one:
        args.cut = args.cut[0]
        measure = measure_device if args.side == "device" else measure_server
        print(json.dumps({"measured_bytes": measure(args)}))
        return
    model = MemoryModel(_workload(args))
    predicted = {"device": model.device(), "server": model.server()}
    print(
        f"Llama-3.2-1B student, Llama-3.1-8B-wide teacher with {args.teacher_layers} "
        f"block(s), LoRA r{args.lora_rank}, bf16-mixed, bf16 teacher, batch "
        f"{args.batch_size} x {args.seq_len}"
    )
    print(f"{'side':>6} {'cut':>4} {'measured GB':>12} {'model GB':>9} {'error':>7}")
    for side in [args.side] if args.side else ["device", "server"]:
        for cut in args.cut:
            command = [sys.executable, __file__, "--one", "--side", side]
            command += ["--cut", str(cut), "--batch-size", str(args.batch_size)]
            command += [
                "--seq-len",
                str(args.seq_len),
                "--lora-rank",
                str(args.lora_rank),
            ]
            command += ["--teacher-layers", str(args.teacher_layers)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            measured = json.loads(out.stdout.strip().splitlines()[-1])["measured_bytes"]
            model_bytes = float(predicted[side].total[cut - 1])
            error = (model_bytes - measured) / measured
            print(
                f"{side:>6} {cut:>4} {measured / 1e9:>12.2f} {model_bytes / 1e9:>9.2f} "
                f"{error:>+7.1%}",
                flush=True,
            )
    from splitkd_flwr.data.tokenizer import DEFAULT_VOCAB_SIZE
    from splitkd_flwr.default_models.configs import default_student_config

    tiny = default_student_config(DEFAULT_VOCAB_SIZE).to_dict()
    full, lora = (
        MemoryModel(
            Workload(16, 8, 64, 1, student_config=tiny, lora_rank=r)
        ).weights_bytes_per_round()[3]
        for r in (0, 8)
    )
    print(
        f"weights-bytes-up, default student cut 4: r8 {lora / 1e3:.1f} kB vs full "
        f"{full / 1e3:.0f} kB = {lora / full:.1%}"
    )
    full = MemoryModel(Workload(16, 8, 64, 1)).weights_bytes_per_round()[3]
    lora = MemoryModel(Workload(16, 8, 64, 1, lora_rank=64)).weights_bytes_per_round()[
        3
    ]
    print(
        f"weights-bytes-up, Llama-3.2-1B cut 4: r64 {lora / 1e6:.1f} MB vs full "
        f"{full / 1e6:.0f} MB = {lora / full:.1%}"
    )


if __name__ == "__main__":
    main()

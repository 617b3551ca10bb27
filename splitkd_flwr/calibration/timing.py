"""Time the real teacher and student here and fit the cost model's throughput to them.

The cost model (simulation/cost.py) turns FLOPs into seconds with one machine figure,
the effective throughput ``R = 2 * cores * clock_hz * utilisation`` (FLOP/s). This
module times every decoder layer's forward and backward pass and both LM heads, fits
``R`` as the step's modelled FLOPs over its measured seconds, and checks the fit
against whole split steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from splitkd_flwr.core.types import Workload
from splitkd_flwr.simulation.cost import TRAIN_FACTOR, CostModel, ModelShape
from splitkd_flwr.simulation.devices import DEFAULT_PROFILES
from splitkd_flwr.split.adapters import architecture_of, position_ids_from_mask
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.partition import partition
from splitkd_flwr.split.step import device_backward, device_forward, server_step


@dataclass(frozen=True)
class OpTiming:
    """One timed piece of a KD step: its modelled FLOPs and least measured seconds."""

    name: str  # e.g. "student.layer3.backward", "teacher.head.forward"
    flops: float
    seconds: float


@dataclass(frozen=True)
class CutTiming:
    """Measured and predicted seconds of one split step at ``cut``."""

    cut: int
    device_s: float  # device forward, backward and optimizer step
    server_s: float  # teacher forward, upper student forward/backward, loss, optimizer
    predicted_device_s: float
    predicted_server_s: float

    @property
    def step_s(self) -> float:
        """Measured split-step seconds."""
        return self.device_s + self.server_s

    @property
    def predicted_step_s(self) -> float:
        """Predicted split-step seconds."""
        return self.predicted_device_s + self.predicted_server_s

    @property
    def error(self) -> float:
        """Relative error of the predicted step time, ``predicted / measured - 1``."""
        return self.predicted_step_s / self.step_s - 1.0


@dataclass
class MachineProfile:
    """What ``splitkd calibrate`` measured: op timings, fitted throughput, cut checks."""

    device: str
    dtype: str
    batch_size: int
    seq_len: int
    threads: int
    clock: str  # "wall" or "cpu" (see resolve_clock)
    ops: list[OpTiming]
    effective_flops: float  # fitted R (FLOP/s)
    cuts: list[CutTiming] = field(default_factory=list)


CLOCKS = ("auto", "wall", "cpu")
Layer = Callable[[torch.Tensor], torch.Tensor]  # hidden (B, T, d) -> hidden or logits


def resolve_clock(device: torch.device, clock: str = "auto") -> str:
    """``wall`` or ``cpu``; ``auto`` is ``cpu`` for a one-thread CPU run, else ``wall``.

    ``wall`` is wall-clock time. ``cpu`` is this process's CPU time, for a CPU run on
    one thread on a shared machine: it leaves out the time the OS gave other processes.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    if clock == "auto":
        one_cpu_thread = device.type == "cpu" and torch.get_num_threads() == 1
        return "cpu" if one_cpu_thread else "wall"
    if clock == "cpu" and device.type != "cpu":
        raise ValueError(f"clock 'cpu' times CPU work only, not {device.type}")
    return clock


def make_timer(device: torch.device, clock: str = "auto") -> Callable[[], float]:
    """A function reading ``clock`` (`resolve_clock`) once the device's work is done."""
    cpu = resolve_clock(device, clock) == "cpu"
    read = time.process_time if cpu else time.perf_counter
    if device.type == "cuda":

        def now() -> float:
            torch.cuda.synchronize(device)
            return read()

        return now
    return read


@dataclass(frozen=True)
class Probe:
    """One op to time: ``run(setup())``; only ``run`` is timed."""

    name: str
    flops: float
    run: Callable[[Any], object]
    setup: Callable[[], Any] = lambda: None


def time_probes(
    probes: Sequence[Probe], now: Callable[[], float], repeats: int, warmup: int = 2
) -> list[OpTiming]:
    """Least time of each probe by ``now`` over ``repeats`` runs after ``warmup``.

    The probes take turns within each repeat and the minimum is kept: other processes
    only ever add time, so the fastest of runs spread over the whole measurement is the
    closest to what the hardware itself takes.
    """
    best = [float("inf")] * len(probes)
    for i in range(warmup + repeats):
        for k, probe in enumerate(probes):
            arg = probe.setup()
            t0 = now()
            probe.run(arg)
            if i >= warmup:
                best[k] = min(best[k], now() - t0)
    return [OpTiming(p.name, p.flops, t) for p, t in zip(probes, best)]


def model_probes(
    model: PreTrainedModel, prefix: str, *, batch_size: int, seq_len: int, train: bool
) -> list[Probe]:
    """Probes of each decoder layer and the LM head: forward, and backward if ``train``.

    Inputs are random hidden states; a layer sees the same masks and rotary tables as in
    a split step. FLOPs are the cost model's (``ModelShape``), per mini-batch.
    """
    device, dtype = model.device, model.dtype
    shape = ModelShape.from_config(model.config.to_dict())
    arch = architecture_of(model)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long, device=device)  # (B, T)
    # (B, T, d)
    hidden = torch.randn(batch_size, seq_len, shape.hidden, device=device, dtype=dtype)
    context = arch.context_modules(model)
    position_ids = position_ids_from_mask(mask)  # (B, T)
    kwargs_for = arch.block_kwargs(model.config, context, hidden, mask, position_ids)
    norm, lm_head = arch.final_norm(model), model.get_output_embeddings()
    layer_flops = shape.layer_forward_flops(seq_len)
    pieces: list[tuple[str, Layer, float]] = [
        (f"layer{i}", lambda x, b=block, i=i: b(x, **kwargs_for(i)), layer_flops)
        for i, block in enumerate(arch.blocks(model))
    ]
    head_flops = shape.head_forward_flops(seq_len)
    pieces.append(("head", lambda x: lm_head(norm(x)), head_flops))
    model.train(train)
    x = hidden.requires_grad_(train)
    probes = []
    for name, fn, flops_per_seq in pieces:
        forward_flops = batch_size * flops_per_seq

        def forward(_: None, fn: Layer = fn) -> None:
            with torch.set_grad_enabled(train):
                fn(x)

        probes.append(Probe(f"{prefix}.{name}.forward", forward_flops, forward))
        if train:

            def graph(fn: Layer = fn) -> tuple[torch.Tensor, torch.Tensor]:
                y = fn(x)  # the graph the timed backward pass walks
                return y, torch.randn_like(y)

            backward_flops = (TRAIN_FACTOR - 1.0) * forward_flops
            probes.append(
                Probe(
                    f"{prefix}.{name}.backward",
                    backward_flops,
                    lambda yg: yg[0].backward(yg[1]),
                    graph,
                )
            )
    return probes


def fit_throughput(ops: Sequence[OpTiming]) -> float:
    """Effective FLOP/s: the ops' modelled FLOPs over their measured seconds.

    Summing before dividing weights each op by its share of the step, so the fit
    reproduces the whole step's time rather than the average op's.
    """
    seconds = sum(op.seconds for op in ops)
    if seconds <= 0.0:
        raise ValueError("no measured time to fit a throughput to")
    return sum(op.flops for op in ops) / seconds


def cost_model_for(
    teacher: PreTrainedModel, student: PreTrainedModel, batch_size: int, seq_len: int
) -> CostModel:
    """The cost model of one mini-batch of these models (FLOPs ignore the server)."""
    workload = Workload(
        num_student_layers=student.config.num_hidden_layers,
        batch_size=batch_size,
        seq_len=seq_len,
        batches_per_round=1,
        student_config=student.config.to_dict(),
        teacher_config=teacher.config.to_dict(),
    )
    return CostModel(workload, DEFAULT_PROFILES["rtx4090"])


def time_split_steps(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    cuts: Sequence[int],
    *,
    batch_size: int,
    seq_len: int,
    repeats: int,
    effective_flops: float,
    clock: str = "auto",
) -> list[CutTiming]:
    """Run real split steps at each cut; time the device's and the server's share.

    The prediction is the cost model's device and server FLOPs of one mini-batch at
    that cut divided by ``effective_flops``.
    """
    device = student.device
    now = make_timer(device, clock)
    cost = cost_model_for(teacher, student, batch_size, seq_len)
    vocab = student.config.vocab_size
    input_ids = torch.randint(4, vocab, (batch_size, seq_len), device=device)  # (B, T)
    mask = torch.ones_like(input_ids)  # (B, T)
    loss_fn = KDLoss(alpha=0.5, temperature=2.0)
    parts = {}
    for cut in cuts:
        device_part, server_part = partition(teacher, student, cut)
        parts[cut] = (
            device_part,
            server_part,
            torch.optim.AdamW(device_part.student_parameters(), lr=1e-5),
            torch.optim.AdamW(server_part.student_parameters(), lr=1e-5),
        )
    best = {cut: [float("inf"), float("inf")] for cut in cuts}  # device_s, server_s
    # Cuts take turns within each repeat, so a burst of load elsewhere hits them alike.
    for i in range(2 + repeats):  # two warm-up rounds (allocator, optimizer state)
        for cut, (device_part, server_part, device_opt, server_opt) in parts.items():
            t0 = now()
            smashed, hidden = device_forward(device_part, input_ids, mask)
            t1 = now()
            result = server_step(server_part, smashed, server_opt, loss_fn)
            t2 = now()
            device_backward(hidden, result.grad_at_cut, device_opt)
            t3 = now()
            if i >= 2:
                best[cut][0] = min(best[cut][0], (t1 - t0) + (t3 - t2))
                best[cut][1] = min(best[cut][1], t2 - t1)
    return [
        CutTiming(
            cut=cut,
            device_s=best[cut][0],
            server_s=best[cut][1],
            predicted_device_s=float(cost.device_flops[cut - 1]) / effective_flops,
            predicted_server_s=float(cost.server_flops[cut - 1]) / effective_flops,
        )
        for cut in cuts
    ]


def profile_machine(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    *,
    batch_size: int,
    seq_len: int,
    repeats: int = 5,
    cuts: Sequence[int] | None = None,
    clock: str = "auto",
) -> MachineProfile:
    """Time both models layer by layer, fit the throughput, and check it on split steps.

    Parameters
    ----------
    teacher, student : PreTrainedModel
        On the device and in the dtype to profile (the split steps train the student:
        profile a copy you do not need).
    batch_size, seq_len : int
        The mini-batch the FLOPs and timings are for.
    repeats : int
        Timed runs per op and per cut (the fastest is kept).
    cuts : sequence of int, optional
        Cuts to check with whole split steps; default every cut ``1..L-1``; ``[]``
        skips the check.
    clock : str
        ``wall``, ``cpu`` or ``auto`` (see `make_timer`).
    """
    shape = {"batch_size": batch_size, "seq_len": seq_len}
    probes = model_probes(student, "student", train=True, **shape)
    probes += model_probes(teacher, "teacher", train=False, **shape)
    ops = time_probes(probes, make_timer(student.device, clock), repeats)
    student.zero_grad(set_to_none=True)
    effective = fit_throughput(ops)
    if cuts is None:
        cuts = range(1, student.config.num_hidden_layers)
    checks = time_split_steps(
        teacher,
        student,
        list(cuts),
        repeats=repeats,
        effective_flops=effective,
        clock=clock,
        **shape,
    )
    return MachineProfile(
        device=str(student.device),
        dtype=str(student.dtype).removeprefix("torch."),
        batch_size=batch_size,
        seq_len=seq_len,
        threads=torch.get_num_threads(),
        clock=resolve_clock(student.device, clock),
        ops=ops,
        effective_flops=effective,
        cuts=checks,
    )

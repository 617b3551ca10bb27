"""KOALA's steps in plain PyTorch: local CE, FedAvg, consensus soft labels, reverse/forward KD.

No Flower here: the strategy (`koala/strategy.py`), the ClientApp handler
(`koala/client.py`) and the experiment (`bench/koala_experiment.py`) all call these.

The consensus rule of heterogeneous mode: `koala/consensus.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitkd_flwr.core.errors import ConfigError, ModelError
from splitkd_flwr.data.loading import Examples, iterate_batches
from splitkd_flwr.koala.consensus import consensus_log_probs
from splitkd_flwr.koala.sequence import CLIP_NORM, SequenceKD, sequence_kd
from splitkd_flwr.koala.topk import decode_topk, encode_topk
from splitkd_flwr.split.loss import IGNORE_INDEX, KDLoss, cross_entropy
from splitkd_flwr.split.step import make_labels

__all__ = ["consensus_log_probs", "server_transfer", "train_ce"]

Batch = Mapping[str, Tensor]
# batch -> (B, T, V) logits at the loss's temperature
TeacherFn = Callable[[Batch], Tensor]


def _logits(model: nn.Module, batch: Batch) -> Tensor:
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
    optimizer.step()


def epoch_batches(
    examples: Examples, batch_size: int, epochs: int, max_batches: int, seed: int
) -> list[dict[str, Tensor]]:
    """``epochs`` shuffled passes over ``examples``, each capped at ``max_batches`` (0: none)."""
    batches: list[dict[str, Tensor]] = []
    for epoch in range(epochs):
        shuffled = iterate_batches(
            examples, batch_size, shuffle=True, seed=seed * 1000 + epoch
        )
        for index, batch in enumerate(shuffled):
            if max_batches and index >= max_batches:
                break
            batches.append(batch)
    return batches


def train_ce(model: nn.Module, batches: Iterable[Batch], lr: float) -> dict[str, float]:
    """Train ``model`` on next-token cross-entropy (a client's local step); return its figures.

    A fresh AdamW per call: clients keep no optimizer state between rounds.

    Returns
    -------
    dict[str, float]
        ``train-loss`` (token mean), ``num-examples`` (sequences), ``tokens``, ``batches``.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss_sum = tokens = examples = steps = 0.0
    for batch in batches:
        labels = make_labels(batch["input_ids"], batch["attention_mask"])  # (B, T)
        loss = cross_entropy(_logits(model, batch), labels)
        _step(model, optimizer, loss)
        count = float((labels != IGNORE_INDEX).sum())
        loss_sum += loss.item() * count
        tokens, examples, steps = tokens + count, examples + len(labels), steps + 1
    return {
        "train-loss": loss_sum / max(tokens, 1.0),
        "num-examples": examples,
        "tokens": tokens,
        "batches": steps,
    }


def fedavg(
    states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]
) -> dict[str, Tensor]:
    """Weighted mean of same-architecture state dicts (non-float buffers: the first's).

    Raises
    ------
    ModelError
        No states, weights that do not sum to > 0, or states with different keys/shapes.
    """
    if not states or len(states) != len(weights) or sum(weights) <= 0:
        raise ModelError(
            f"fedavg needs states and positive weights, got {len(states)} and {list(weights)}"
        )
    keys = set(states[0])
    for state in states[1:]:
        if set(state) != keys:
            raise ModelError(
                f"fedavg of different architectures: keys {sorted(keys ^ set(state))[:3]} differ"
            )
    total = float(sum(weights))
    averaged = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            averaged[name] = first.clone()
            continue
        if any(s[name].shape != first.shape for s in states):
            raise ModelError(
                f"fedavg: tensor {name!r} has different shapes across clients"
            )
        averaged[name] = sum(
            s[name].float() * (w / total) for s, w in zip(states, weights)
        ).to(first.dtype)
    return averaged


def consensus_teacher(
    models: Sequence[nn.Module],
    num_examples: Sequence[float],
    temperature: float,
    top_k: int = 0,
) -> TeacherFn:
    """A teacher whose logits, softened at ``temperature``, give the consensus exactly.

    With ``top_k > 0`` each model's distribution first goes through a top-k upload
    (`koala/topk.py`: k log-probs kept, the tail spread uniformly), as if each
    architecture had sent only that.
    """

    def teach(batch: Batch) -> Tensor:
        logits = [_logits(m.eval(), batch) for m in models]
        if top_k > 0:
            vocab = logits[0].shape[-1]
            uploads = [
                encode_topk(F.log_softmax(x.float() / temperature, dim=-1), top_k)
                for x in logits
            ]
            # decoded log-probs are already at the temperature: mix them at T = 1
            decoded = [decode_topk(v, i, vocab) for v, i in uploads]
            log_q = consensus_log_probs(decoded, num_examples, 1.0)
        else:
            log_q = consensus_log_probs(logits, num_examples, temperature)
        # log_softmax(T * log q / T) = log q: the loss re-softens and gets q back.
        return temperature * log_q  # (B, T, V)

    return teach


def model_teacher(model: nn.Module) -> TeacherFn:
    """A single model as teacher (forward KD: the large model teaches a small one)."""
    return lambda batch: _logits(model.eval(), batch)


def distill(
    student: nn.Module,
    teacher: TeacherFn,
    batches: Iterable[Batch],
    lr: float,
    loss: KDLoss,
) -> dict[str, float]:
    """Train ``student`` towards ``teacher`` on (unlabelled) ``batches``; return the mean KD term.

    The proxy data's tokens only mask padding: with ``loss.alpha == 0`` no label is used.
    """
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    kd_sum = steps = 0.0
    for batch in batches:
        with torch.no_grad():
            teacher_logits = teacher(batch)  # (B, T, V)
        student.train()
        # (B, T) mask only
        labels = make_labels(batch["input_ids"], batch["attention_mask"])
        terms = loss(_logits(student, batch), teacher_logits, labels)
        _step(student, optimizer, terms.loss)
        kd_sum, steps = kd_sum + terms.kd.item(), steps + 1
    return {"kd-loss": kd_sum / max(steps, 1.0), "batches": steps}


def unlabelled_kd_loss(
    temperature: float, divergence: str = "forward-kl", beta: float = 0.5
) -> KDLoss:
    """The KD loss of both transfer directions: no CE term (the proxy data has no labels)."""
    return KDLoss(alpha=0.0, temperature=temperature, divergence=divergence, beta=beta)


def server_transfer(
    large: nn.Module,
    smalls: Sequence[nn.Module],
    updates: Sequence[Sequence[tuple[Mapping[str, Tensor], float]]],
    proxy_batches: Sequence[Batch],
    loss: KDLoss,
    large_lr: float,
    small_lr: float,
    *,
    top_k: int = 0,
    sequence: SequenceKD | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """One KOALA server step: aggregate, reverse KD (small -> large), forward KD (large -> small).

    Reverse KD is token-level on the proxy batches and, with ``sequence``, also
    sequence-level on the small models' answers to proxy prompts (`koala/sequence.py`).

    Parameters
    ----------
    large : nn.Module
        The server's large model, trained in place.
    smalls : Sequence[nn.Module]
        One global small model per architecture, replaced and trained in place.
    updates : Sequence[Sequence[tuple[Mapping[str, Tensor], float]]]
        Per architecture, its clients' ``(state dict, num examples)`` of this round.
    proxy_batches : Sequence[Batch]
        The server's unlabelled proxy mini-batches.
    loss : KDLoss
        Usually `unlabelled_kd_loss`.
    large_lr, small_lr : float
        AdamW learning rates of the two KD directions.
    top_k : int
        0: full distributions; else each small model's soft labels pass a top-k upload.
    sequence : SequenceKD | None
        Prompts and sizes of sequence-level KD; None: token-level only.
    seed : int
        Seed of this round's prompt draw and sampling.

    Returns
    -------
    dict[str, float]
        ``reverse-kd-loss``, ``forward-kd-loss-<k>`` per architecture, ``architectures-heard``,
        and with ``sequence`` the ``seq-kd-*`` figures of `sequence.sequence_kd`.
    """
    if len(updates) != len(smalls):
        raise ConfigError(
            f"{len(updates)} update groups for {len(smalls)} architectures"
        )
    heard, counts = [], []
    for small, group in zip(smalls, updates):
        if group:  # same architecture: averaging weights is well defined (FedAvg)
            small.load_state_dict(fedavg([s for s, _ in group], [n for _, n in group]))
            heard.append(small)
            counts.append(float(sum(n for _, n in group)))
    metrics: dict[str, float] = {"architectures-heard": float(len(heard))}
    if not heard:
        return metrics
    teacher = consensus_teacher(heard, counts, loss.temperature, top_k)
    if proxy_batches:
        reverse = distill(large, teacher, proxy_batches, large_lr, loss)
        metrics["reverse-kd-loss"] = reverse["kd-loss"]
    if sequence is not None:
        metrics.update(sequence_kd(large, heard, counts, sequence, large_lr, seed))
    for index, small in enumerate(smalls):
        forward = distill(small, model_teacher(large), proxy_batches, small_lr, loss)
        metrics[f"forward-kd-loss-{index}"] = forward["kd-loss"]
    return metrics


def state_of(model: nn.Module) -> dict[str, Tensor]:
    """Detached CPU copies of ``model``'s weights (for a message or an average)."""
    return {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

"""Sequence-level KD (Kim & Rush, 2016): the small models continue the proxy's prompts and
the large model trains on those continuations, each weighted by the small models' consensus.

Token-level reverse KD on proxy text moves only what the proxy's inputs express: if the
server holds the clients' questions but not their answers, no soft label on the question
tokens says what the answer is. Here every heard small model writes its own answer to each
prompt (sampled at temperature 1, so the large model sees the small models' distribution,
not only its mode), and each answer is weighted by how likely the *consensus* of all heard
models finds it:

    w(prompt j, answer by k) ∝ n_k * exp(mean_t log q(y_t)),   sum over k of w = 1 per prompt,

``q`` the token-level consensus mixture (`consensus.consensus_log_probs`, temperature 1) and
``n_k`` the examples architecture k's clients trained on. An answer that only its own
author believes counts less than one that all models find likely. With one architecture
every answer weighs 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.loading import Examples
from splitkd_flwr.koala.consensus import consensus_log_probs
from splitkd_flwr.split.loss import IGNORE_INDEX
from splitkd_flwr.split.step import make_labels

# gradient clipping of every KOALA step: tiny models on tiny data spike early
CLIP_NORM = 1.0


@dataclass(frozen=True)
class SequenceKD:
    """What the server needs for sequence-level KD.

    ``prompts`` are token ids (bos included); per round ``prompts_per_round`` of them are
    drawn, continued by up to ``max_new_tokens`` tokens and trained on in rows of at most
    ``seq_len`` tokens, ``batch_size`` rows a step.
    """

    prompts: list[list[int]]
    prompts_per_round: int
    max_new_tokens: int
    seq_len: int
    batch_size: int
    eos_id: int
    pad_id: int

    def __post_init__(self) -> None:
        if not self.prompts or self.prompts_per_round < 1 or self.max_new_tokens < 1:
            raise ConfigError(
                f"sequence KD needs prompts, prompts_per_round >= 1 and max_new_tokens >= 1, "
                f"got {len(self.prompts)}, {self.prompts_per_round}, {self.max_new_tokens}"
            )
        if max(len(p) for p in self.prompts) >= self.seq_len:
            raise ConfigError(f"a prompt fills the whole seq_len {self.seq_len}")


@dataclass(frozen=True)
class Continuations:
    """Prompt + answer rows (right-padded) and where each answer starts."""

    examples: Examples  # (N, T)
    answer_start: Tensor  # (N,) index of the first answer token
    prompt_index: Tensor  # (N,) which prompt the row continues
    author: Tensor  # (N,) which model wrote the answer


@torch.no_grad()
def sample_continuations(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int,
    generator: torch.Generator,
) -> list[list[int]]:
    """Sample an answer to each prompt at temperature 1, stopping at ``eos_id``.

    Prompts are left-padded into one batch (positions count real tokens only), and the
    whole prefix is re-run each step: the models are tiny and this keeps it cache-free.

    Returns
    -------
    list[list[int]]
        Per prompt, the sampled ids (the eos included when it was drawn).
    """
    model.eval()
    longest = max(len(p) for p in prompts)
    # (B, L) left-padded prompts and their mask
    ids = torch.tensor([[eos_id] * (longest - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    done = torch.zeros(len(prompts), dtype=torch.bool)
    answers: list[list[int]] = [[] for _ in prompts]
    for _ in range(max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions
        ).logits
        probs = F.softmax(logits[:, -1].float(), dim=-1)  # (B, V)
        drawn = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
        for row in torch.nonzero(~done).flatten().tolist():
            answers[row].append(int(drawn[row]))
        done |= drawn == eos_id
        if bool(done.all()):
            break
        ids = torch.cat([ids, drawn.unsqueeze(-1)], dim=-1)
        # finished rows keep running (their answers are complete and no longer read)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    return answers


def build_rows(
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[Sequence[int]]],
    seq_len: int,
    pad_id: int,
) -> Continuations:
    """One right-padded row per (author, prompt): prompt + answer, cut at ``seq_len``.

    ``answers[k][j]`` is model k's answer to prompt j.
    """
    rows, starts, prompt_index, author = [], [], [], []
    for k, per_model in enumerate(answers):
        if len(per_model) != len(prompts):
            raise ConfigError(
                f"model {k} answered {len(per_model)} of {len(prompts)} prompts"
            )
        for j, (prompt, answer) in enumerate(zip(prompts, per_model)):
            rows.append((list(prompt) + list(answer))[:seq_len])
            starts.append(len(prompt))
            prompt_index.append(j)
            author.append(k)
    input_ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(rows), seq_len), dtype=torch.long)  # (N, T)
    for n, row in enumerate(rows):
        input_ids[n, : len(row)] = torch.tensor(row)
        attention_mask[n, : len(row)] = 1
    return Continuations(
        Examples(input_ids, attention_mask),
        torch.tensor(starts),
        torch.tensor(prompt_index),
        torch.tensor(author),
    )


def answer_labels(rows: Continuations) -> Tensor:
    """(N, T) next-token targets of the answer tokens only (prompt positions ignored)."""
    labels = make_labels(rows.examples.input_ids, rows.examples.attention_mask)
    # position t predicts token t + 1: an answer token when t + 1 >= start
    positions = torch.arange(labels.shape[1]).unsqueeze(0)  # (1, T)
    return labels.masked_fill(
        positions + 1 < rows.answer_start.unsqueeze(1), IGNORE_INDEX
    )


@torch.no_grad()
def consensus_weights(
    models: Sequence[nn.Module],
    num_examples: Sequence[float],
    rows: Continuations,
    batch_size: int,
) -> Tensor:
    """Each row's weight (module docstring), normalised to sum 1 over a prompt's rows.

    Returns
    -------
    Tensor
        (N,) fp32, >= 0.
    """
    labels = answer_labels(rows)  # (N, T)
    scores = []
    for start in range(0, len(labels), batch_size):
        ids = rows.examples.input_ids[start : start + batch_size]
        mask = rows.examples.attention_mask[start : start + batch_size]
        logits = [m.eval()(input_ids=ids, attention_mask=mask).logits for m in models]
        log_q = consensus_log_probs(logits, num_examples, 1.0)  # (B, T, V)
        target = labels[start : start + batch_size]  # (B, T)
        real = target != IGNORE_INDEX
        picked = log_q.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores.append((picked * real).sum(-1) / real.sum(-1).clamp(min=1))
    prior = torch.tensor([float(n) for n in num_examples]).log()  # (K,)
    score = torch.cat(scores) + prior[rows.author]  # (N,)
    weights = torch.zeros_like(score)
    for j in rows.prompt_index.unique():
        group = rows.prompt_index == j
        weights[group] = torch.softmax(score[group], dim=0)
    return weights


def weighted_sequence_ce(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Cross-entropy of each row's answer tokens, rows weighted: ``sum w_n ce_n / sum w_n ntok_n``."""
    per_token = F.cross_entropy(
        logits.float().flatten(0, 1),
        labels.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(labels)  # (B, T)
    real = (labels != IGNORE_INDEX).float()
    w = weights.unsqueeze(1) * real  # (B, T)
    return (per_token * w).sum() / w.sum().clamp(min=1e-8)


def sequence_kd(
    large: nn.Module,
    heard: Sequence[nn.Module],
    num_examples: Sequence[float],
    config: SequenceKD,
    lr: float,
    seed: int,
) -> dict[str, float]:
    """One round of sequence-level KD into ``large``; return its figures.

    Draws ``config.prompts_per_round`` prompts (by ``seed``), lets every heard model
    answer each, weighs the answers (`consensus_weights`) and trains ``large`` one pass
    over them with AdamW at ``lr`` (gradients clipped like every KOALA step).

    Returns
    -------
    dict[str, float]
        ``seq-kd-loss`` (weighted answer CE), ``seq-kd-answers``, ``seq-kd-answer-tokens``,
        ``seq-kd-max-weight`` (mean over prompts of the largest answer weight).
    """
    generator = torch.Generator().manual_seed(seed)
    count = min(config.prompts_per_round, len(config.prompts))
    chosen = torch.randperm(len(config.prompts), generator=generator)[:count]
    prompts = [config.prompts[i] for i in chosen.tolist()]
    answers = [
        [
            answer
            for start in range(0, len(prompts), config.batch_size)
            for answer in sample_continuations(
                model,
                prompts[start : start + config.batch_size],
                config.max_new_tokens,
                config.eos_id,
                generator,
            )
        ]
        for model in heard
    ]
    rows = build_rows(prompts, answers, config.seq_len, config.pad_id)
    weights = consensus_weights(heard, num_examples, rows, config.batch_size)
    labels = answer_labels(rows)  # (N, T)
    optimizer = torch.optim.AdamW(large.parameters(), lr=lr)
    large.train()
    order = torch.randperm(len(labels), generator=generator)
    loss_sum = steps = 0.0
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        logits = large(
            input_ids=rows.examples.input_ids[index],
            attention_mask=rows.examples.attention_mask[index],
        ).logits
        loss = weighted_sequence_ce(logits, labels[index], weights[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(large.parameters(), CLIP_NORM)
        optimizer.step()
        loss_sum, steps = loss_sum + loss.item(), steps + 1
    per_prompt_max = [
        float(weights[rows.prompt_index == j].max()) for j in range(count)
    ]
    return {
        "seq-kd-loss": loss_sum / max(steps, 1.0),
        "seq-kd-answers": float(len(labels)),
        "seq-kd-answer-tokens": float((labels != IGNORE_INDEX).sum()),
        "seq-kd-max-weight": sum(per_prompt_max) / max(count, 1),
    }

"""Knowledge-distillation losses: forward/reverse KL, generalized JSD, top-k, KD+CE."""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitkd_flwr.core.constants import DIVERGENCES, IGNORE_INDEX
from splitkd_flwr.core.errors import ConfigError


# Every divergence below works on log-probabilities over the last dimension, where a
# vocabulary entry can be -inf (probability 0: a token a model masks out).
#
# KL(p || q) = sum_i p_i (log p_i - log q_i). Entries with p_i = 0 contribute exactly 0
# (0 log 0 = 0). Entries with p_i > 0 and q_i = 0 make the exact KL +inf: there the code
# does NOT return +inf; it leaves those entries out of the sum and returns the KL over
# the entries both models can produce (without renormalising). One +inf token would make
# the batch loss +inf and its gradient NaN, so the whole step would be lost; leaving the
# entry out keeps the gradient of every other entry exact. The cross-entropy against
# the labels stays exact (+inf for a label the student rules out).
#
# The generalized JSD (0 < beta < 1) is finite everywhere: the mixture M is positive
# wherever either model is, so only entries where BOTH are -inf are left out (they
# contribute exactly 0). An entry that only one model rules out still contributes.
#
# Non-finite entries are zeroed before any product so that no NaN (0 * -inf, or the
# gradient of a logsumexp over only -inf) reaches the forward or backward pass.
def _finite_pair(s_logp: Tensor, t_logp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    keep = torch.isfinite(s_logp) & torch.isfinite(t_logp)
    return s_logp.masked_fill(~keep, 0.0), t_logp.masked_fill(~keep, 0.0), keep


def _kl_rows(p_logp: Tensor, q_logp: Tensor, keep: Tensor) -> Tensor:
    """KL(p || q) summed over the last dimension, on already-sanitised log-probs."""
    return (p_logp.exp() * (p_logp - q_logp)).masked_fill(~keep, 0.0).sum(-1)


def _jsd_rows(s_logp: Tensor, t_logp: Tensor, beta: float) -> Tensor:
    """``beta * KL(t || M) + (1 - beta) * KL(s || M)``, exact with one-sided -inf."""
    s_in, t_in = torch.isfinite(s_logp), torch.isfinite(t_logp)
    s_safe = s_logp.masked_fill(~s_in, 0.0)
    t_safe = t_logp.masked_fill(~t_in, 0.0)
    # log M = logsumexp(log(1 - beta) + s, log(beta) + t), each side -inf where that
    # model rules the entry out; where both do, any finite stand-in (left out below).
    neg_inf = torch.tensor(float("-inf"), dtype=s_logp.dtype, device=s_logp.device)
    s_side = torch.where(s_in, s_safe + math.log(1.0 - beta), neg_inf)
    t_side = torch.where(t_in, t_safe + math.log(beta), neg_inf)
    neither = ~(s_in | t_in)
    s_side = s_side.masked_fill(neither, 0.0)
    t_side = t_side.masked_fill(neither, 0.0)
    mixture = torch.logsumexp(torch.stack([s_side, t_side]), dim=0)  # (..., V)
    return beta * _kl_rows(t_safe, mixture, t_in) + (1.0 - beta) * _kl_rows(
        s_safe, mixture, s_in
    )


def _divergence_rows(
    s_logp: Tensor, t_logp: Tensor, divergence: str, beta: float = 0.5
) -> Tensor:
    """Per-row divergence between student and teacher log-probs (..., V) -> (...)."""
    # TRL's generalized JSD: the endpoints are the two KLs, the interior the
    # beta-skewed JSD against the mixture M = beta * teacher + (1 - beta) * student.
    if divergence == "jsd" and 0.0 < beta < 1.0:
        return _jsd_rows(s_logp, t_logp, beta)
    s_logp, t_logp, keep = _finite_pair(s_logp, t_logp)
    if divergence == "forward-kl" or (divergence == "jsd" and beta == 0.0):
        return _kl_rows(t_logp, s_logp, keep)
    return _kl_rows(s_logp, t_logp, keep)


def _masked_mean(per_token: Tensor, labels: Tensor) -> Tensor:
    """Mean over tokens whose label is not -100; 0 (with a zero gradient) if none is."""
    mask = labels != IGNORE_INDEX  # (B, T)
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum()
    return total / mask.sum().clamp_min(1)


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V) fp32


class TopKTeacher(NamedTuple):
    """The teacher's distribution cut to its k likeliest tokens plus a tail bucket."""

    logprobs: Tensor  # (B, T, k) log-probs of the k most likely tokens
    ids: Tensor  # (B, T, k) their token ids
    tail_logprob: Tensor  # (B, T, 1) log of the mass on every other token


def _tail_logprob(logp: Tensor, ids: Tensor) -> Tensor:
    """Log of the mass outside ``ids``: a logsumexp over the rest, exact even near 1."""
    rest = logp.scatter(-1, ids, float("-inf"))  # (B, T, V)
    # A row with no mass left (k = V) would give logsumexp a NaN gradient: fill it
    # with zeros for the sum and put the -inf back afterwards.
    empty = torch.isneginf(rest).all(dim=-1, keepdim=True)  # (B, T, 1)
    tail = torch.logsumexp(rest.masked_fill(empty, 0.0), dim=-1, keepdim=True)
    return tail.masked_fill(empty, float("-inf"))  # (B, T, 1)


def collapse_to_topk(
    student_logits: Tensor, ids: Tensor, temperature: float = 1.0
) -> Tensor:
    """Return the student's log-probs on the teacher's k ids + tail, (B, T, k + 1)."""
    logp = _log_probs(student_logits, temperature)  # (B, T, V)
    return torch.cat([logp.gather(-1, ids), _tail_logprob(logp, ids)], dim=-1)


def _divergence(
    student_logits: Tensor,
    teacher: Tensor | TopKTeacher,
    labels: Tensor,
    divergence: str,
    beta: float,
    temperature: float,
) -> Tensor:
    _check_divergence(divergence)
    _check_temperature(temperature)
    _check_beta(beta)
    if isinstance(teacher, TopKTeacher):
        s_logp = collapse_to_topk(student_logits, teacher.ids, temperature)  # (B,T,k+1)
        t_logp = torch.cat([teacher.logprobs, teacher.tail_logprob], dim=-1).float()
    else:
        s_logp = _log_probs(student_logits, temperature)  # (B, T, V)
        t_logp = _log_probs(teacher, temperature)  # (B, T, V)
    return _masked_mean(_divergence_rows(s_logp, t_logp, divergence, beta), labels)


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """Return KL(teacher || student) per token, averaged over unmasked tokens.

    Parameters
    ----------
    student_logits, teacher_logits : Tensor
        Shape (B, T, V), any float dtype (computed in fp32).
    labels : Tensor
        Shape (B, T), aligned with the logits; -100 marks a token to ignore.
    temperature : float
        Both distributions are ``softmax(logits / temperature)``.

    Returns
    -------
    Tensor
        A scalar; 0 when every label is -100.

    Notes
    -----
    A token the teacher rules out (-inf logit) contributes exactly 0. Where the student
    rules out a token the teacher does not, the exact KL is +inf; this returns the sum
    over the other tokens instead (see the comment above ``_finite_pair``), so one such
    token cannot turn the batch's loss into +inf and its gradient into NaN.
    """
    return _divergence(
        student_logits, teacher_logits, labels, "forward-kl", 0.0, temperature
    )


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """Return KL(student || teacher) per token (mode seeking); as `forward_kl`."""
    return _divergence(
        student_logits, teacher_logits, labels, "reverse-kl", 0.0, temperature
    )


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """Return the generalized Jensen-Shannon divergence of TRL's GKD.

    ``beta * KL(t || M) + (1 - beta) * KL(s || M)`` with
    ``M = beta * t + (1 - beta) * s``; ``beta = 0`` gives the forward KL and
    ``beta = 1`` the reverse KL (TRL's convention), ``beta = 0.5`` the symmetric JSD.
    For ``0 < beta < 1`` the value is exact and finite even where one model rules a
    token out (-inf logit); at the endpoints it is the KL, as `forward_kl` documents.
    Other arguments as `forward_kl`.
    """
    return _divergence(student_logits, teacher_logits, labels, "jsd", beta, temperature)


def topk_teacher(
    teacher_logits: Tensor, k: int, temperature: float = 1.0
) -> TopKTeacher:
    """Compress the teacher's output to k log-probs + tail mass per token.

    Sends k + 1 floats and k ids per token instead of V floats.

    Parameters
    ----------
    teacher_logits : Tensor
        Shape (B, T, V).
    k : int
        Number of tokens kept, ``1 <= k <= V``.
    temperature : float
        Must equal the temperature of the loss that consumes the result.

    Returns
    -------
    TopKTeacher
        ``(logprobs (B, T, k), ids (B, T, k), tail_logprob (B, T, 1))``, fp32.
    """
    vocab_size = teacher_logits.shape[-1]
    if not 1 <= k <= vocab_size:
        raise ConfigError(
            f"top-k k must be in [1, {vocab_size}] (the vocabulary size), got {k}."
        )
    _check_temperature(temperature)
    with torch.no_grad():
        logp = _log_probs(teacher_logits, temperature)  # (B, T, V)
        logprobs, ids = logp.topk(k, dim=-1)  # (B, T, k)
        tail = _tail_logprob(logp, ids)  # (B, T, 1)
    return TopKTeacher(logprobs, ids, tail)


def topk_divergence(
    student_logits: Tensor,
    teacher: TopKTeacher,
    labels: Tensor,
    divergence: str = "forward-kl",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """Divergence between the k + 1-bucket teacher and the student collapsed onto it.

    With ``k = V`` (and any divergence) this equals the full-vocabulary divergence.
    """
    return _divergence(student_logits, teacher, labels, divergence, beta, temperature)


def cross_entropy(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Token-mean cross-entropy in fp32; 0 (zero gradient) when all labels are -100."""
    # (B*T,)
    per_token = F.cross_entropy(
        student_logits.float().flatten(0, 1),
        labels.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return _masked_mean(per_token.view_as(labels), labels)


class LossTerms(NamedTuple):
    """One evaluation of `KDLoss`: the total to backpropagate and its two terms."""

    loss: Tensor  # alpha * ce + (1 - alpha) * T^2 * kd
    ce: Tensor  # cross-entropy against the labels
    kd: Tensor  # the divergence at temperature T, before the T^2 factor


def _check_beta(beta: float) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"beta must be in [0.0, 1.0], got {beta}.")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0.0:
        raise ConfigError(f"temperature must be > 0, got {temperature}.")


def _check_divergence(divergence: str) -> None:
    if divergence not in DIVERGENCES:
        raise ConfigError(
            f"Unknown divergence {divergence!r}; "
            f"choose one of {', '.join(DIVERGENCES)}."
        )


class KDLoss(nn.Module):
    """Hinton-form distillation loss: ``alpha * CE + (1 - alpha) * T^2 * divergence``.

    Parameters
    ----------
    alpha : float
        Weight of the cross-entropy on the labels, in [0, 1]; 1 trains on labels only.
    temperature : float
        Softening temperature T > 0 of both distributions in the divergence; the
        T^2 factor keeps the gradient's scale independent of T.
    divergence : str
        One of ``"forward-kl"`` (KL(teacher || student)), ``"reverse-kl"``, ``"jsd"``.
    beta : float
        The generalized JSD's beta in [0, 1] (used by ``"jsd"`` only).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 1.0,
        divergence: str = "forward-kl",
        beta: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0.0, 1.0], got {alpha}.")
        _check_temperature(temperature)
        _check_divergence(divergence)
        _check_beta(beta)
        self.alpha = alpha
        self.temperature = temperature
        self.divergence = divergence
        self.beta = beta

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | TopKTeacher,
        labels: Tensor,
    ) -> LossTerms:
        """Return the loss and its terms; the teacher is logits or a `TopKTeacher`."""
        ce = cross_entropy(student_logits, labels)
        kd = _divergence(
            student_logits,
            teacher_logits,
            labels,
            self.divergence,
            self.beta,
            self.temperature,
        )
        loss = self.alpha * ce + (1.0 - self.alpha) * self.temperature**2 * kd
        return LossTerms(loss, ce, kd)

    def extra_repr(self) -> str:
        """Show the configuration when the module is printed."""
        return (
            f"alpha={self.alpha}, temperature={self.temperature}, "
            f"divergence={self.divergence!r}, beta={self.beta}"
        )

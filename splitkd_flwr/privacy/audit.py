"""Run every attack that applies to a captured round; one finding per channel and attack.

The threat model: an honest-but-curious edge server. It follows the protocol, holds the
teacher, the global student (so the weights it sends), its own text and everything it
receives in a round, and tries to read the device's text. Each attack below uses only
that; the device's batches (``capture.truth``) serve to score the guesses, nothing else.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from splitkd_flwr.core.constants import IGNORE_INDEX
from splitkd_flwr.privacy.capture import RoundCapture, right_padded, token_recovery
from splitkd_flwr.privacy.inversion import (
    HiddenDecoder,
    ids_from_labels,
    nearest_rows,
    train_decoder,
)
from splitkd_flwr.privacy.leaks import (
    moved_rows,
    replay_head,
    set_recall_precision,
)
from splitkd_flwr.privacy.search import replay_round, search_ids
from splitkd_flwr.split.models import num_layers
from splitkd_flwr.split.partition import StudentSegment
from splitkd_flwr.split.step import LossFn, make_labels

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """What one attack recovered from one channel.

    ``recovered`` is the fraction of the device's real tokens guessed exactly (for the
    upload: the recall of the set of token types used); ``detail`` says more.
    """

    channel: str
    attack: str
    recovered: float
    detail: str = ""


@dataclass
class ServerKnowledge:
    """What the server holds besides the round's traffic."""

    teacher: PreTrainedModel
    student: PreTrainedModel  # the global student at the round's start
    server_batches: list[dict[str, Tensor]]  # the server's own text
    loss_fn: LossFn
    kd_alpha: float
    pad_id: int = 0


def _score(guesses: list[Tensor], truth: list[Mapping[str, Tensor]]) -> float:
    exact = total = 0
    for guess, batch in zip(guesses, truth, strict=False):
        e, t = token_recovery(guess, batch["input_ids"], batch["attention_mask"])
        exact, total = exact + e, total + t
    return exact / max(total, 1)


def _segment(
    student: PreTrainedModel,
    start: int,
    stop: int,
    sent: Mapping[str, Tensor],
    *,
    embed: bool,
    head: bool,
) -> StudentSegment:
    """A segment of the server's own copy of the student, holding the weights it sent."""
    segment = StudentSegment(student, start, stop, embed=embed, head=head)
    segment.load_student_state_dict({k: sent[k] for k in segment.student_state_dict()})
    return segment


def audit(
    capture: RoundCapture,
    knowledge: ServerKnowledge,
    *,
    search_rows: int = 1,
    search_steps: int | None = None,
) -> list[Finding]:
    """Run the attacks on ``capture``.

    The known-weight search is the costly attack. With ``search_rows`` it recovers that
    many sequences of the round's first mini-batch (the device still holds the weights
    the server sent); with ``search_rows = 0`` it recovers every sequence of the first
    ``search_steps`` mini-batches (all if None), replaying the device's optimizer between
    them, and says whether the replica ended bit-identical to the device's upload.
    """
    steps, truth = capture.steps(), capture.truth
    vocab = knowledge.teacher.config.vocab_size
    first = steps[0]
    findings: list[Finding] = []
    started = time.perf_counter()

    if "teacher_embeds" in first:
        table = knowledge.teacher.get_input_embeddings().weight.detach()
        guesses = [nearest_rows(s["teacher_embeds"], table) for s in steps]
        findings.append(
            Finding(
                "teacher embedding output",
                "nearest row of the teacher's table",
                _score(guesses, truth),
            )
        )
    if "labels" in first:
        guesses = [ids_from_labels(s["labels"]) for s in steps]
        labelled = sum(int((s["labels"] != IGNORE_INDEX).sum()) for s in steps)
        exact = sum(
            int((s["labels"] == make_labels(b["input_ids"], b["attention_mask"])).all())
            for s, b in zip(steps, truth, strict=False)
        )
        findings.append(
            Finding(
                "labels",
                "read: labels are the next tokens",
                _score(guesses, truth),
                f"{labelled} labels, {exact}/{len(steps)} batches exact",
            )
        )
    if "attention_mask" in first:
        exact = sum(
            int(torch.equal(s["attention_mask"].sum(-1), b["attention_mask"].sum(-1)))
            for s, b in zip(steps, truth, strict=False)
        )
        findings.append(
            Finding(
                "attention mask",
                "read: sequence lengths",
                exact / len(steps),
                "fraction of batches whose every length is read",
            )
        )

    student = copy.deepcopy(knowledge.student)
    sent = capture.sent_weights
    cut = capture.cut_layer
    lower_names = StudentSegment(student, 0, cut, embed=True, head=False)
    knows_lower = set(lower_names.student_state_dict()) <= set(sent)
    if "student_hidden" in first and knows_lower:
        lower = _segment(student, 0, cut, sent, embed=True, head=False)
        decoder = train_decoder(lower, knowledge.server_batches, vocab)
        guesses = [
            decoder.guess(s["student_hidden"], s["attention_mask"]) for s in steps
        ]
        # The decoder knows the weights at the round's start; the device moves off them.
        findings.append(
            Finding(
                f"student hidden state (cut {cut})",
                "learned decoder trained on the server's own text",
                _score(guesses, truth),
                f"first mini-batch {100 * _score(guesses[:1], truth):.1f} %",
            )
        )
        if search_rows:
            findings.append(
                _search_first_batch(
                    lower, steps[0], truth[0], decoder, search_rows, vocab
                )
            )
        elif all(
            right_padded(s["attention_mask"]) for s in steps[: search_steps or None]
        ):
            findings.append(
                _replay(
                    lower,
                    steps,
                    truth,
                    decoder,
                    vocab,
                    capture,
                    knowledge,
                    search_steps,
                )
            )
    elif "student_hidden" in first:
        findings.append(
            Finding(
                f"student hidden state (cut {cut})",
                "search / decoder need the device's weights",
                0.0,
                "not attempted: the server never had the device's first layers",
            )
        )

    if "grad_top" in first:
        top = num_layers(student)
        head = _segment(student, top, top, sent, embed=False, head=True)
        searched = steps[:search_steps] if search_steps else steps
        labels = replay_head(
            head, searched, knowledge.loss_fn, knowledge.kd_alpha, capture.device_lr
        )
        findings.append(
            Finding(
                "gradient at the top (u-shape)",
                "label search with the sent head + head replay",
                _score([ids_from_labels(x) for x in labels], truth),
                f"{len(searched)}/{len(steps)} batches",
            )
        )

    findings.extend(_upload_findings(capture, student))
    logger.info("audit attacks took %.1f s", time.perf_counter() - started)
    return findings


def _search_first_batch(
    lower: StudentSegment,
    step: Mapping[str, Tensor],
    batch: Mapping[str, Tensor],
    decoder: HiddenDecoder,
    rows: int,
    vocab: int,
) -> Finding:
    mask = step["attention_mask"][:rows]
    guess = search_ids(
        lower, step["student_hidden"][:rows], mask, decoder.propose, vocab
    )
    exact, total = token_recovery(guess, batch["input_ids"][:rows], mask)
    return Finding(
        f"student hidden state (cut {lower.stop})",
        "search with the device weights the server sent",
        exact / max(total, 1),
        f"{rows} sequence(s) of the first mini-batch, {total} tokens",
    )


def _replay(
    lower: StudentSegment,
    steps: list[dict[str, Tensor]],
    truth: list[dict[str, Tensor]],
    decoder: HiddenDecoder,
    vocab: int,
    capture: RoundCapture,
    knowledge: ServerKnowledge,
    search_steps: int | None,
) -> Finding:
    searched = steps[:search_steps] if search_steps else steps
    result = replay_round(
        lower,
        searched,
        decoder.propose,
        vocab,
        capture.device_lr,
        capture.returned_weights,
        pad_id=knowledge.pad_id,
    )
    if len(searched) == len(steps):
        tracked = (
            "replica bit-identical to the upload"
            if result.weights_tracked_exactly
            else f"replica off the upload by {result.max_weight_error:.2e}"
        )
    else:
        tracked = "replica not compared (not every batch replayed)"
    return Finding(
        f"student hidden state (cut {lower.stop})",
        "search with the sent device weights + optimizer replay",
        _score(result.guesses, truth),
        f"{len(searched)}/{len(steps)} mini-batches; {tracked}",
    )


def _upload_findings(capture: RoundCapture, student: PreTrainedModel) -> list[Finding]:
    vocab = student.config.vocab_size
    inputs = StudentSegment(student, 0, 1, embed=True, head=False)
    tables = [
        k
        for k, v in inputs.student_state_dict().items()
        if v.dim() == 2 and v.shape[0] == vocab
    ]
    findings = []
    for key in tables:
        if key not in capture.sent_weights or key not in capture.returned_weights:
            continue
        moved = moved_rows(
            capture.sent_weights[key],
            capture.returned_weights[key],
            len(capture.steps()),
            capture.device_lr,
        )
        used = torch.zeros(vocab, dtype=torch.bool)
        for batch in capture.truth:
            used[batch["input_ids"][batch["attention_mask"].bool()]] = True
        recall, precision = set_recall_precision(moved, used)
        findings.append(
            Finding(
                "device weight upload",
                "embedding rows that moved: the token types used",
                recall,
                f"set of {int(used.sum())} types: recall {recall:.3f}, "
                f"precision {precision:.3f}",
            )
        )
    return findings

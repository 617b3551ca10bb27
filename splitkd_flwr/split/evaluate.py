"""Held-out evaluation of a causal LM, alone or against its teacher."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from splitkd_flwr.split.placement import module_device, to_device


@torch.no_grad()
def evaluate_lm(
    model: PreTrainedModel,
    batches: Iterable[Mapping[str, torch.Tensor]],
    teacher: PreTrainedModel | None = None,
) -> dict[str, float]:
    """Next-token loss, perplexity and accuracy of ``model`` on ``batches``, where it is.

    With a ``teacher``, also the fraction of tokens where both predict the same next
    token ("agreement"). Padding (``attention_mask == 0``) is excluded; every figure is a
    mean over tokens, not over batches, so batches of unequal fill weigh correctly.
    """
    was_training = model.training
    model.eval()
    loss_sum = correct = agree = tokens = 0.0
    device = module_device(model)
    for batch in batches:
        input_ids = to_device(batch["input_ids"], device)
        mask = to_device(batch["attention_mask"], device)
        # (B, T-1, V)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
        targets = input_ids[:, 1:]  # (B, T-1)
        keep = mask[:, 1:].bool() & mask[:, :-1].bool()  # a target exists and is real
        logits_kept = logits[keep].float()  # (N, V)
        targets_kept = targets[keep]  # (N,)
        loss_sum += F.cross_entropy(logits_kept, targets_kept, reduction="sum").item()
        prediction = logits_kept.argmax(-1)
        correct += (prediction == targets_kept).sum().item()
        if teacher is not None:
            teacher_device = module_device(teacher)
            teacher_logits = teacher(
                input_ids=to_device(input_ids, teacher_device),
                attention_mask=to_device(mask, teacher_device),
            ).logits[:, :-1]  # (B, T-1, V)
            teacher_prediction = teacher_logits[keep.to(teacher_device)].argmax(-1)
            agree += (teacher_prediction.to(device) == prediction).sum().item()
        tokens += keep.sum().item()
    model.train(was_training)
    if tokens == 0:
        raise ValueError("evaluation batches hold no target tokens")
    loss = loss_sum / tokens
    metrics = {
        "loss": loss,
        # exp overflows past ~709; 50 is already absurd
        "perplexity": math.exp(min(loss, 50.0)),
        "accuracy": correct / tokens,
        "tokens": tokens,
    }
    if teacher is not None:
        metrics["teacher-agreement"] = agree / tokens
    return metrics

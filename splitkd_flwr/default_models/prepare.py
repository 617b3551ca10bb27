"""Prepare the default models once: tokenizer, trained teacher, initial student."""

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from logging import INFO, getLogger
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import LlamaForCausalLM, PreTrainedModel

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.corpus import (
    CORPUS_VERSION,
    DEFAULT_NUM_DOCUMENTS,
    generate_corpus,
)
from splitkd_flwr.data.loading import (
    DEFAULT_SEQ_LEN,
    Examples,
    encode_documents,
    iterate_batches,
    iterate_steps,
)
from splitkd_flwr.data.partition import split_corpus
from splitkd_flwr.data.tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer
from splitkd_flwr.default_models.configs import (
    default_student_config,
    default_teacher_config,
)
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.loss import cross_entropy
from splitkd_flwr.split.step import make_labels

logger = getLogger(__name__)

CACHE_ENV = "SPLITKD_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/splitkd-flwr"
_PREPARE_VERSION = 1  # bump when this recipe changes what it writes
_STAMP = "stamp.json"


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class TeacherTraining:
    """How the default teacher is trained; every field is part of the cache key."""

    num_steps: int = _help("AdamW steps on the server's part of the corpus", 400)
    batch_size: int = _help("sequences per step", 32)
    lr: float = _help("peak learning rate (linear warm-up, cosine decay)", 3e-3)
    warmup_steps: int = _help("steps of linear warm-up", 40)
    weight_decay: float = _help("AdamW weight decay", 0.01)
    num_documents: int = _help("size of the generated corpus", DEFAULT_NUM_DOCUMENTS)
    vocab_size: int = _help("BPE vocabulary of the tokenizer", DEFAULT_VOCAB_SIZE)
    seq_len: int = _help("tokens per training sequence", DEFAULT_SEQ_LEN)
    eval_examples: int = _help("held-out sequences the perplexities are taken on", 1024)

    def __post_init__(self) -> None:
        for name in ("num_steps", "batch_size", "num_documents", "eval_examples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}.")


@dataclass(frozen=True)
class DefaultModels:
    """Where the prepared default models are, and how good they are."""

    root: Path  # holds the three directories below and the stamp
    tokenizer_dir: Path  # AutoTokenizer.from_pretrained
    teacher_dir: Path  # AutoModelForCausalLM.from_pretrained, trained
    student_dir: Path  # AutoModelForCausalLM.from_pretrained, random init (seeded)
    teacher_perplexity: float  # on the held-out part of the built-in corpus
    student_perplexity: float  # of the initial student, same tokens
    prepare_s: float  # wall time the preparation took (when it ran)
    cached: bool  # True if this call found them prepared


def default_cache_dir() -> Path:
    """``$SPLITKD_CACHE`` if set, else ``~/.cache/splitkd-flwr``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _cache_key(seed: int, training: TeacherTraining) -> tuple[str, dict[str, Any]]:
    settings = {
        "prepare-version": _PREPARE_VERSION,
        "corpus-version": CORPUS_VERSION,
        "seed": seed,
        "training": dataclasses.asdict(training),
        "teacher": default_teacher_config(training.vocab_size).to_dict(),
        "student": default_student_config(training.vocab_size).to_dict(),
    }
    settings["teacher"].pop("transformers_version", None)
    settings["student"].pop("transformers_version", None)
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], settings


def _lr_at(step: int, training: TeacherTraining) -> float:
    warmup = min(1.0, (step + 1) / max(training.warmup_steps, 1))
    progress = min(step / training.num_steps, 1.0)
    return training.lr * warmup * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_teacher(
    teacher: PreTrainedModel,
    examples: Examples,
    training: TeacherTraining,
    *,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``teacher`` with next-token cross-entropy; return every step's loss."""
    optimizer = torch.optim.AdamW(
        teacher.parameters(), lr=training.lr, weight_decay=training.weight_decay
    )
    teacher.train()
    losses: list[float] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("training teacher", total=training.num_steps, loss="")
        for step, batch in enumerate(
            iterate_steps(examples, training.batch_size, training.num_steps, seed=seed)
        ):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, training)
            logits = teacher(**batch).logits  # (B, T, V)
            loss = cross_entropy(logits, make_labels(**batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.update(task, advance=1, loss=f"loss {losses[-1]:.3f}")
    teacher.eval()
    return losses


def _perplexity(model: PreTrainedModel, examples: Examples) -> float:
    return evaluate_lm(model, iterate_batches(examples, 64))["perplexity"]


def _build(
    directory: Path, seed: int, training: TeacherTraining, progress: bool
) -> dict[str, Any]:
    split = split_corpus(generate_corpus(training.num_documents), num_devices=1)
    server_texts = [d.text for d in split.server]
    eval_texts = [d.text for d in split.eval]
    tokenizer = train_tokenizer(server_texts, training.vocab_size)
    tokenizer.save_pretrained(directory / "tokenizer")
    vocab_size = len(tokenizer)
    train = encode_documents(server_texts, tokenizer, training.seq_len)
    held_out = encode_documents(eval_texts, tokenizer, training.seq_len)
    n = training.eval_examples
    held_out = Examples(held_out.input_ids[:n], held_out.attention_mask[:n])
    with torch.random.fork_rng():  # seed the initial weights, leave the caller's RNG
        torch.manual_seed(seed)
        student = LlamaForCausalLM(default_student_config(vocab_size))
        teacher = LlamaForCausalLM(default_teacher_config(vocab_size))
        losses = train_teacher(teacher, train, training, seed=seed, progress=progress)
    student.save_pretrained(directory / "student")
    teacher.save_pretrained(directory / "teacher")
    return {
        "vocab-size": vocab_size,
        "teacher-params": teacher.num_parameters(),
        "student-params": student.num_parameters(),
        "teacher-perplexity": _perplexity(teacher, held_out),
        "student-perplexity": _perplexity(student, held_out),
        "first-loss": losses[0],
        "last-loss": losses[-1],
        "torch-threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
    }


def _models(root: Path, stamp: dict[str, Any], cached: bool) -> DefaultModels:
    return DefaultModels(
        root=root,
        tokenizer_dir=root / "tokenizer",
        teacher_dir=root / "teacher",
        student_dir=root / "student",
        teacher_perplexity=stamp["teacher-perplexity"],
        student_perplexity=stamp["student-perplexity"],
        prepare_s=stamp["prepare-s"],
        cached=cached,
    )


def prepare_default_models(
    cache_dir: str | Path | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    training: TeacherTraining | None = None,
) -> DefaultModels:
    """Build the tokenizer, train the teacher, initialise the student; cache them.

    The teacher is trained on the server's part of the built-in corpus and both
    perplexities are measured on its held-out part. Everything is written with
    ``save_pretrained`` under ``<cache_dir>/default-models/<key>/``, where the key
    hashes the configs, ``seed``, ``training`` and the corpus version; a later call with
    the same settings finds the stamp there and returns at once.

    Parameters
    ----------
    cache_dir : str | Path | None
        Cache root; when None, `default_cache_dir`: ``$SPLITKD_CACHE`` or
        ``~/.cache/splitkd-flwr``.
    seed : int
        Seeds the initial weights of both models and the teacher's batch order.
    progress : bool
        Show a progress bar while the teacher trains.
    training : TeacherTraining | None
        Training settings (defaults: a few minutes on 2 CPU cores).

    Returns
    -------
    DefaultModels
        The three directories and the held-out perplexities.
    """
    training = training or TeacherTraining()
    key, settings = _cache_key(seed, training)
    parent = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    root = parent / "default-models" / key
    if (root / _STAMP).is_file():
        return _models(root, json.loads((root / _STAMP).read_text()), cached=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    logger.log(INFO, "Preparing the default models in %s", root)
    # Build in a scratch folder and rename it into place, so a crash never leaves a
    # half-written cache entry that a later call would trust.
    scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root.parent))
    try:
        stamp = _build(scratch, seed, training, progress)
        stamp |= {"prepare-s": time.perf_counter() - start, "settings": settings}
        (scratch / _STAMP).write_text(json.dumps(stamp, indent=2, default=str))
        try:
            scratch.rename(root)
        except OSError:  # another process finished first: keep its copy
            if not (root / _STAMP).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stamp = json.loads((root / _STAMP).read_text())
    logger.log(INFO, "Default models ready in %.1f s", stamp["prepare-s"])
    return _models(root, stamp, cached=False)

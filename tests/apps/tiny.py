"""Tiny real Hugging Face checkpoints (teacher + tokenizer, student) that the app tests save."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from splitkd_flwr.data.corpus import generate_corpus
from splitkd_flwr.data.tokenizer import train_tokenizer
from splitkd_flwr.flower.config import RunConfig


def tiny_llama(vocab_size: int, hidden: int, layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def save_tiny_pair(root: Path, student_layers: int = 4) -> tuple[Path, Path]:
    """Write ``root/teacher`` (with the tokenizer) and ``root/student``; return both paths."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer(
        (d.text for d in generate_corpus(400, seed=1)), vocab_size=300
    )
    teacher = tiny_llama(len(tokenizer), hidden=32, layers=2)
    student = tiny_llama(len(tokenizer), hidden=16, layers=student_layers)
    teacher_dir, student_dir = root / "teacher", root / "student"
    teacher.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    student.save_pretrained(student_dir)
    return teacher_dir, student_dir


def tiny_run_config(models: Path, **overrides: object) -> RunConfig:
    """A run of the tiny pair (saved under ``models``) small enough for one process: one
    round of two 4 x 16 mini-batches, fixed cut 2, no modelled world; ``overrides`` win."""
    teacher_dir, student_dir = save_tiny_pair(models)
    values: dict[str, object] = {
        "num_rounds": 1,
        "max_batches_per_epoch": 2,
        "batch_size": 4,
        "seq_len": 16,
        "eval_batches": 1,
        "planner": "fixed",
        "cut_layer": 2,
        "scenario": "none",
        "server_clock": "none",
        "server_energy_meter": "none",
        "teacher": str(teacher_dir),
        "student": str(student_dir),
    }
    return RunConfig(**{**values, **overrides})

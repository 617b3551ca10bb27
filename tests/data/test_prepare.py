"""Tests of preparing and caching the default models (tiny settings, a few steps)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.corpus import generate_corpus
from splitkd_flwr.data.loading import encode_documents
from splitkd_flwr.data.tokenizer import train_tokenizer
from splitkd_flwr.default_models.configs import (
    STUDENT_NUM_LAYERS,
    default_teacher_config,
)
from splitkd_flwr.default_models.prepare import (
    CACHE_ENV,
    TeacherTraining,
    default_cache_dir,
    prepare_default_models,
    train_teacher,
)

TINY = TeacherTraining(num_steps=3, num_documents=300, vocab_size=300, eval_examples=16)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, prepare_default_models(cache, seed=1, progress=False, training=TINY)


def test_writes_loadable_models_and_tokenizer(prepared) -> None:
    _, models = prepared

    tokenizer = AutoTokenizer.from_pretrained(models.tokenizer_dir)
    teacher = AutoModelForCausalLM.from_pretrained(models.teacher_dir)
    student = AutoModelForCausalLM.from_pretrained(models.student_dir)

    assert not models.cached
    assert teacher.config.vocab_size == student.config.vocab_size == len(tokenizer)
    assert student.config.num_hidden_layers == STUDENT_NUM_LAYERS
    assert teacher.config.hidden_size > student.config.hidden_size
    assert models.teacher_perplexity > 1.0 and models.student_perplexity > 1.0
    stamp = json.loads((models.root / "stamp.json").read_text())
    assert stamp["settings"]["training"]["num_steps"] == TINY.num_steps


def test_second_call_is_a_cache_hit(prepared) -> None:
    cache, first = prepared
    teacher_file = first.teacher_dir / "model.safetensors"
    written = teacher_file.stat().st_mtime_ns

    again = prepare_default_models(cache, seed=1, progress=False, training=TINY)

    assert again.cached and again.root == first.root
    assert again.teacher_perplexity == first.teacher_perplexity
    assert teacher_file.stat().st_mtime_ns == written
    # no scratch folders left behind
    assert not [p for p in again.root.parent.iterdir() if p.name.startswith(".")]


def test_other_settings_get_another_entry(prepared) -> None:
    cache, first = prepared

    other = prepare_default_models(cache, seed=2, progress=False, training=TINY)

    assert not other.cached and other.root != first.root
    first_student = AutoModelForCausalLM.from_pretrained(first.student_dir)
    other_student = AutoModelForCausalLM.from_pretrained(other.student_dir)
    # the seed reaches the initial weights
    assert not torch.equal(first_student.lm_head.weight, other_student.lm_head.weight)


def test_prepare_leaves_the_global_rng_alone(tmp_path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    prepare_default_models(tmp_path, progress=False, training=TINY)

    assert torch.equal(torch.rand(3), expected)


def test_teacher_training_lowers_the_loss() -> None:
    texts = [d.text for d in generate_corpus(200)]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    examples = encode_documents(texts, tokenizer, seq_len=48)
    teacher = LlamaForCausalLM(default_teacher_config(len(tokenizer)))
    training = TeacherTraining(num_steps=25, batch_size=16, warmup_steps=5)

    losses = train_teacher(teacher, examples, training, progress=False)

    assert len(losses) == 25
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_cache_dir_from_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir().name == "splitkd-flwr"


def test_bad_training_settings_raise() -> None:
    with pytest.raises(ConfigError, match="num_steps"):
        TeacherTraining(num_steps=0)
    with pytest.raises(ConfigError, match="-1.0"):
        TeacherTraining(lr=-1.0)

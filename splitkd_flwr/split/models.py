"""Load teacher and student, check they pair, untie heads, store the teacher table."""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from splitkd_flwr.core.errors import CutLayerError, ModelError
from splitkd_flwr.split.adapters import check_model_type

logger = logging.getLogger(__name__)

_UNTIED_CLASSES: set[type] = set()
TEACHER_EMBEDDING_KEY = "weight"  # the one tensor in the file, (V, d_t)


def load_causal_lm(
    source: str | Path | PretrainedConfig | Mapping[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    device_map: str | None = None,
) -> PreTrainedModel:
    """Load a causal LM from a local directory or build a fresh one from a config.

    Parameters
    ----------
    source : str | Path | PretrainedConfig | Mapping[str, Any]
        A directory written by ``save_pretrained`` (read with ``local_files_only``;
        nothing is fetched from a hub), a Transformers config, or a dict config with a
        ``"model_type"`` key (the other keys go to that config class).
    dtype : torch.dtype
        Parameter dtype of the returned model.
    device_map : str | None
        ``"auto"``: accelerate places the blocks over the visible GPUs (then CPU) as
        they fit, for a teacher larger than one GPU; only for a directory.

    Returns
    -------
    PreTrainedModel
        An ``AutoModelForCausalLM`` of a supported family (see
        ``adapters.SUPPORTED_MODEL_TYPES``); randomly initialised from a config.

    Raises
    ------
    ModelError
        The directory does not exist or has no config; the architecture is unsupported.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not (path / "config.json").is_file():
            what = "has no config.json" if path.is_dir() else "does not exist"
            raise ModelError(
                f"Model path {str(path)!r} {what}; "
                "expected a save_pretrained directory."
            )
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        check_model_type(config.model_type)
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True, device_map=device_map
        )
    config = _config_from(source)
    check_model_type(config.model_type)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _config_from(source: PretrainedConfig | Mapping[str, Any]) -> PretrainedConfig:
    if isinstance(source, PretrainedConfig):
        return source
    if isinstance(source, Mapping):
        kwargs = dict(source)
        model_type = kwargs.pop("model_type", None)
        if model_type is None:
            raise ModelError("A dict model config needs a 'model_type' (e.g. 'llama').")
        check_model_type(model_type)
        return AutoConfig.for_model(model_type, **kwargs)
    raise ModelError(
        f"Cannot load a model from {type(source).__name__}; give a directory, a "
        "PretrainedConfig or a dict with 'model_type'."
    )


def num_layers(model: PreTrainedModel) -> int:
    """Return the number of decoder blocks of ``model``."""
    return int(model.config.num_hidden_layers)


def check_cut_layer(cut_layer: int, num_layers: int) -> int:
    """Return ``cut_layer`` if in ``1..num_layers - 1``, else raise CutLayerError."""
    if (
        isinstance(cut_layer, bool)
        or not isinstance(cut_layer, int)
        or not (1 <= cut_layer <= num_layers - 1)
    ):
        raise CutLayerError(
            f"Cut layer {cut_layer!r} is out of range: a student with {num_layers} "
            f"layers can be cut at 1..{num_layers - 1}."
        )
    return cut_layer


def check_pair(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    *,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
    student_tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Refuse a teacher and student that do not share one vocabulary.

    Raises
    ------
    ModelError
        The configs' ``vocab_size`` differ, or both tokenizers are given and differ.
    """
    for model in (teacher, student):
        check_model_type(getattr(model.config, "model_type", None))
    vocab_t, vocab_s = teacher.config.vocab_size, student.config.vocab_size
    if vocab_t != vocab_s:
        raise ModelError(
            f"Teacher and student vocabularies differ: teacher vocab_size {vocab_t}, "
            f"student vocab_size {vocab_s}; distillation needs one shared vocabulary."
        )
    if teacher_tokenizer is None or student_tokenizer is None:
        return
    size_t, size_s = len(teacher_tokenizer), len(student_tokenizer)
    if size_t != size_s:
        raise ModelError(
            f"Teacher and student tokenizers differ: teacher has {size_t} tokens, "
            f"student has {size_s}."
        )
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ModelError(
            f"Teacher and student tokenizers both have {size_t} tokens but map them to "
            "different ids."
        )


def is_tied(model: PreTrainedModel) -> bool:
    """Return whether the LM head shares its weight with the input embedding."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def untie_embeddings(model: PreTrainedModel) -> bool:
    """Give the LM head its own copy of a tied input embedding, in place.

    A split cannot keep the two tied: the embedding lives on the device and the head on
    the server, so a tie would ship the head's gradient to the device every step. After
    this, the student trains (and saves) as an untied model; build optimizers after it.

    Returns
    -------
    bool
        True if the weights were tied and are now untied.
    """
    if not is_tied(model):
        return False
    head = model.get_output_embeddings()
    weight = head.weight
    head.weight = nn.Parameter(
        weight.detach().clone(), requires_grad=weight.requires_grad
    )
    model.config.tie_word_embeddings = False
    # Once per class and process: a device unties a freshly built student every round.
    level = logging.DEBUG if type(model) in _UNTIED_CLASSES else logging.WARNING
    _UNTIED_CLASSES.add(type(model))
    logger.log(
        level,
        "Untied the input embedding and LM head of %s for the split: they now "
        "train apart and save as two tensors.",
        type(model).__name__,
    )
    return True


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode without gradients (a teacher), and return it."""
    model.eval()
    model.requires_grad_(False)
    return model


def save_teacher_embedding(
    teacher: PreTrainedModel | nn.Embedding, path: str | Path
) -> Path:
    """Save the teacher's input embedding table, the only teacher weight a device needs.

    Parameters
    ----------
    teacher : PreTrainedModel | nn.Embedding
        The teacher, or its input embedding.
    path : str | Path
        Destination ``.safetensors`` file.

    Returns
    -------
    Path
        The written file (one tensor ``"weight"``, shape ``(V, d_t)``).
    """
    if isinstance(teacher, nn.Embedding):
        embedding = teacher
    else:
        embedding = teacher.get_input_embeddings()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weight = embedding.weight.detach().contiguous()  # (V, d_t)
    save_file({TEACHER_EMBEDDING_KEY: weight}, str(path))
    return path


def load_teacher_embedding(
    path: str | Path, *, dtype: torch.dtype | None = None
) -> nn.Embedding:
    """Load a table saved by ``save_teacher_embedding`` as a frozen ``nn.Embedding``.

    Raises
    ------
    ModelError
        The file does not exist or holds no ``"weight"`` tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Teacher embedding file {str(path)!r} does not exist.")
    tensors = load_file(str(path))
    return embedding_from_state(tensors, dtype=dtype)


def embedding_from_state(
    state: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None
) -> nn.Embedding:
    """Build a frozen ``nn.Embedding`` from ``{"weight": (V, d)}``."""
    if TEACHER_EMBEDDING_KEY not in state:
        raise ModelError(
            f"A teacher embedding needs a {TEACHER_EMBEDDING_KEY!r} tensor; "
            f"got keys {sorted(state)}."
        )
    weight = state[TEACHER_EMBEDDING_KEY]  # (V, d_t)
    if dtype is not None:
        weight = weight.to(dtype)
    return nn.Embedding.from_pretrained(weight, freeze=True)

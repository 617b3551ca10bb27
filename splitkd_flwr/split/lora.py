"""LoRA on the student with peft: inject adapters, name what trains, merge for saving.

With ``lora-rank`` > 0 every target projection of the student gets a peft LoRA adapter;
the base weights (embeddings, head, norms, projections) are frozen, so the only tensors
a round changes, and so the only ones the Flower messages carry, are the adapters. The
adapters are kept in fp32 (master weights) whatever the base dtype; the saved student is
merged (``W + B A * alpha / r``) into a plain Transformers checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel

from splitkd_flwr.core.errors import ConfigError

ADAPTER = "default"
_ROTARY_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
# The attention and MLP projections of each family (torchtune's and peft's usual set).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": _ROTARY_TARGETS,
    "qwen2": _ROTARY_TARGETS,
    "qwen3": _ROTARY_TARGETS,
    "mistral": _ROTARY_TARGETS,
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA recipe: rank ``r``, scale ``alpha / r``, dropout, target module names."""

    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()  # empty: DEFAULT_TARGETS of the model's family

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora-rank must be >= 1 for LoRA, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"lora-alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora-dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_keys(
        cls, rank: int, alpha: float, dropout: float, targets: str
    ) -> LoraSpec | None:
        """The spec of the ``lora-*`` keys; None for ``lora-rank = 0`` (full fine-tuning)."""
        if rank == 0:
            return None
        names = tuple(t.strip() for t in targets.split(",") if t.strip())
        return cls(rank, alpha, dropout, names)


def add_lora(model: PreTrainedModel, spec: LoraSpec) -> PreTrainedModel:
    """Inject LoRA adapters into ``model`` in place; freeze the rest; adapters in fp32.

    Raises
    ------
    ConfigError
        A target names no module of ``model``.
    """
    model_type = model.config.model_type
    targets = spec.targets or DEFAULT_TARGETS[model_type]
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(targets),
        bias="none",
        # GPT-2's Conv1D stores its weight as (in, out).
        fan_in_fan_out=model_type == "gpt2",
    )
    try:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    except ValueError as err:
        raise ConfigError(f"lora-targets {list(targets)}: {err}") from err
    # peft gives adapters the base layer's dtype; master weights stay fp32.
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds LoRA adapters."""
    return any(isinstance(m, LoraLayer) for m in model.modules())


def trainable_names(model: nn.Module) -> set[str]:
    """The state_dict keys of the parameters that train (all of them without LoRA)."""
    return {name for name, p in model.named_parameters() if p.requires_grad}


def adapter_names(names: Iterable[str]) -> list[str]:
    """The keys among ``names`` that belong to LoRA adapters."""
    return [n for n in names if ".lora_" in n]


def plain_key(key: str) -> str | None:
    """The plain model's key of a LoRA model's ``key`` (None for an adapter tensor)."""
    if ".lora_" in key:
        return None
    return key.replace(".base_layer.", ".")


@torch.no_grad()
def plain_state_dict(
    model: nn.Module, *, merge_adapters: bool = True
) -> dict[str, torch.Tensor]:
    """``model``'s weights under the plain model's keys, adapters merged in (or left out).

    ``AutoModelForCausalLM.from_config(config).load_state_dict(...)`` takes the result,
    and so does ``save_pretrained(..., state_dict=...)``: no peft needed to use it.
    Without ``merge_adapters`` it is the frozen base, what a device is provisioned with.
    Without adapters it is the state_dict itself.
    """
    state = model.state_dict()
    plain = {}
    for key, tensor in state.items():
        name = plain_key(key)
        if name is not None:
            plain[name] = tensor
    if not merge_adapters:
        return plain
    for prefix, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            weight = plain[f"{prefix}.weight"]
            delta = layer.get_delta_weight(ADAPTER)  # the base weight's layout
            plain[f"{prefix}.weight"] = (weight.float() + delta.float()).to(
                weight.dtype
            )
    return plain

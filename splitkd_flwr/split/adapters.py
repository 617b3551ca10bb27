"""Per-architecture layout of a causal LM: its pieces and how its blocks are fed."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.masking_utils import (
    create_causal_mask,
    create_sliding_window_causal_mask,
)

from splitkd_flwr.core.errors import ModelError

# Block keyword arguments for block ``i`` (absolute index in the full model).
BlockKwargs = Callable[[int], dict[str, Any]]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Return positions counting real tokens only, so a left-padded row starts at 0.

    Parameters
    ----------
    attention_mask : torch.Tensor
        ``(B, T)`` with 1 on real tokens and 0 on padding.

    Returns
    -------
    torch.Tensor
        ``(B, T)`` long positions; on right-padded rows the real tokens get ``0..n-1``,
        exactly what ``torch.arange`` gives them.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, T)


class Architecture(ABC):
    """How one family of ``*ForCausalLM`` lays out its modules and feeds its blocks.

    A subclass names the attributes of the family's decoder and builds the keyword
    arguments its blocks take (masks, rotary tables), using the same Transformers
    helpers as the family's own forward, so a segment computes what the whole model
    computes.
    """

    model_types: tuple[str, ...] = ()
    decoder_attr = "model"
    blocks_attr = "layers"
    norm_attr = "norm"

    def decoder(self, model: PreTrainedModel) -> nn.Module:
        """Return the base model under the LM head (``model.model``, ...)."""
        return getattr(model, self.decoder_attr)

    def blocks(self, model: PreTrainedModel) -> nn.ModuleList:
        """Return the decoder blocks, in order."""
        return getattr(self.decoder(model), self.blocks_attr)

    def final_norm(self, model: PreTrainedModel) -> nn.Module:
        """Return the norm applied after the last block."""
        return getattr(self.decoder(model), self.norm_attr)

    @abstractmethod
    def input_modules(self, model: PreTrainedModel) -> nn.ModuleDict:
        """Return the modules that turn token ids into the first block's input."""

    def context_modules(self, model: PreTrainedModel) -> nn.ModuleDict:
        """Return parameter-free modules every segment needs (rotary tables)."""
        return nn.ModuleDict()

    def rebuild_context(self, model: PreTrainedModel) -> None:
        """Recompute context buffers (rotary tables) of a model built on meta."""

    @abstractmethod
    def embed(
        self, inputs: nn.ModuleDict, input_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Return the first block's input ``(B, T, d)``."""

    @abstractmethod
    def block_kwargs(
        self,
        config: PretrainedConfig,
        context: nn.ModuleDict,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> BlockKwargs:
        """Return a function giving block ``i``'s keyword arguments for this batch."""


class RotaryArchitecture(Architecture):
    """Llama, Qwen2/2.5, Qwen3, Mistral: token embedding, rotary positions, RMSNorm."""

    model_types = ("llama", "qwen2", "qwen3", "mistral")

    def input_modules(self, model: PreTrainedModel) -> nn.ModuleDict:
        """Return ``{"embed_tokens": ...}``."""
        return nn.ModuleDict({"embed_tokens": self.decoder(model).embed_tokens})

    def context_modules(self, model: PreTrainedModel) -> nn.ModuleDict:
        """Return ``{"rotary_emb": ...}`` (buffers only, no parameters)."""
        return nn.ModuleDict({"rotary_emb": self.decoder(model).rotary_emb})

    def rebuild_context(self, model: PreTrainedModel) -> None:
        """Rebuild the rotary tables (computed at init, so empty on the meta device)."""
        decoder = self.decoder(model)
        decoder.rotary_emb = type(decoder.rotary_emb)(model.config)

    def embed(
        self, inputs: nn.ModuleDict, input_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Look the tokens up; positions enter later, as rotary tables in attention."""
        return inputs["embed_tokens"](input_ids)  # (B, T, d)

    def block_kwargs(
        self,
        config: PretrainedConfig,
        context: nn.ModuleDict,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> BlockKwargs:
        """Build the causal (and any sliding-window) masks and the rotary tables."""
        mask_kwargs = {
            "config": config,
            "inputs_embeds": hidden,
            "attention_mask": attention_mask,
            "cache": None,
            "position_ids": position_ids,
        }
        layer_types = _layer_types(config)
        masks = {"full_attention": create_causal_mask(**mask_kwargs)}
        if "sliding_attention" in layer_types:
            sliding = create_sliding_window_causal_mask(**mask_kwargs)
            masks["sliding_attention"] = sliding
        cos_sin = context["rotary_emb"](hidden, position_ids)  # 2 x (B, T, head_dim)

        def kwargs_for(i: int) -> dict[str, Any]:
            return {
                "attention_mask": masks[layer_types[i]],
                "position_embeddings": cos_sin,
                "position_ids": position_ids,
            }

        return kwargs_for


class GPT2Architecture(Architecture):
    """GPT-2: token + learned position embeddings, LayerNorm, causal mask only."""

    model_types = ("gpt2",)
    decoder_attr = "transformer"
    blocks_attr = "h"
    norm_attr = "ln_f"

    def input_modules(self, model: PreTrainedModel) -> nn.ModuleDict:
        """Return ``{"wte", "wpe", "drop"}``."""
        decoder = self.decoder(model)
        modules = {"wte": decoder.wte, "wpe": decoder.wpe, "drop": decoder.drop}
        return nn.ModuleDict(modules)

    def embed(
        self, inputs: nn.ModuleDict, input_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Add learned positions to the token embedding, then embedding dropout."""
        hidden = inputs["wte"](input_ids) + inputs["wpe"](position_ids)  # (B, T, d)
        return inputs["drop"](hidden)

    def block_kwargs(
        self,
        config: PretrainedConfig,
        context: nn.ModuleDict,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> BlockKwargs:
        """Build the causal mask with padding."""
        mask = create_causal_mask(
            config=config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            cache=None,
            position_ids=position_ids,
        )
        return lambda i: {"attention_mask": mask, "position_ids": position_ids}


_ARCHITECTURES: dict[str, Architecture] = {
    model_type: arch
    for arch in (RotaryArchitecture(), GPT2Architecture())
    for model_type in arch.model_types
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_ARCHITECTURES))


def check_model_type(model_type: str | None) -> str:
    """Return ``model_type`` if supported; else raise ModelError listing them."""
    if model_type not in _ARCHITECTURES:
        raise ModelError(
            f"Unsupported architecture {model_type!r}: splitkd-flwr partitions "
            f"causal LMs of model_type {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    return model_type


def architecture_of(model: PreTrainedModel) -> Architecture:
    """Return the layout of ``model`` (a supported ``*ForCausalLM``)."""
    return _ARCHITECTURES[check_model_type(getattr(model.config, "model_type", None))]


def _layer_types(config: PretrainedConfig) -> list[str]:
    """Attention kind per block: ``config.layer_types`` (Qwen), else one for all."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return list(layer_types)
    # Mistral has no layer_types: a set sliding_window applies to every block.
    sliding = getattr(config, "sliding_window", None) is not None
    kind = "sliding_attention" if sliding else "full_attention"
    return [kind] * config.num_hidden_layers

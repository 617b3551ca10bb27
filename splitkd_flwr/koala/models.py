"""KOALA's models: the large one and the small architectures, from directories or untrained.

KOALA's question is whether the large model learns what only the clients know, so by
default neither side starts from a checkpoint that has seen the clients' data (the trained
default teacher has: it learnt the whole built-in corpus). ``teacher = "default"`` is the
default teacher's *architecture*, randomly initialised; a small model named by a shape
``"<hidden>x<layers>x<heads>"`` (or ``"default"``, `DEFAULT_SMALL`) is a randomly
initialised Llama of the large model's family and vocabulary with tied embeddings. At
`DEFAULT_SMALL` the two are ~48x apart in parameters (the paper's pair: ~40x).
"""

from __future__ import annotations

import re

from transformers import LlamaConfig, PretrainedConfig

from splitkd_flwr.core.errors import ConfigError

DEFAULT_SMALL = "16x2x2"
_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def parse_shape(name: str) -> tuple[int, int, int] | None:
    """``"32x2x2"`` -> (hidden 32, layers 2, heads 2); None if ``name`` is not a shape.

    Raises
    ------
    ConfigError
        A shape whose hidden size is not a multiple of twice the heads (rotary needs an
        even head size) or with a zero.
    """
    name = DEFAULT_SMALL if name == "default" else name
    match = _SHAPE.match(name)
    if match is None:
        return None
    hidden, layers, heads = (int(x) for x in match.groups())
    if min(hidden, layers, heads) < 1 or hidden % (2 * heads):
        raise ConfigError(
            f"small shape {name!r}: hidden must be a multiple of 2 x heads, all >= 1"
        )
    return hidden, layers, heads


def small_config(large: PretrainedConfig, shape: tuple[int, int, int]) -> LlamaConfig:
    """A small Llama of ``large``'s vocabulary and special tokens, tied embeddings."""
    hidden, layers, heads = shape
    return LlamaConfig(
        vocab_size=large.vocab_size,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=getattr(large, "max_position_embeddings", 256),
        tie_word_embeddings=True,
        attention_dropout=0.0,
        pad_token_id=large.pad_token_id,
        bos_token_id=large.bos_token_id,
        eos_token_id=large.eos_token_id,
        use_cache=False,
    )

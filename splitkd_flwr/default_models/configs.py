"""Default tiny Llama-architecture teacher and student configs for the built-in data."""

from transformers import LlamaConfig

from splitkd_flwr.core.constants import STUDENT_NUM_LAYERS
from splitkd_flwr.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

# examples per mini-batch
DEFAULT_BATCH_SIZE = 16

_MAX_POSITIONS = 256  # rotary positions; room for examples 4 x DEFAULT_SEQ_LEN long


def _tiny_llama(
    vocab_size: int,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=_MAX_POSITIONS,
        tie_word_embeddings=False,  # Llama-3.2-1B ties them; untied keeps the cut clean
        attention_dropout=0.0,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        use_cache=False,
    )


def default_student_config(vocab_size: int) -> LlamaConfig:
    """Return the default student: 16 narrow Llama blocks (about 0.9 M parameters).

    Parameters
    ----------
    vocab_size : int
        Size of the shared tokenizer's vocabulary.

    Returns
    -------
    LlamaConfig
        Hidden size 64, 4 query heads sharing 2 key/value heads (grouped-query
        attention as in Llama 3.2), untied embeddings, no dropout.
    """
    return _tiny_llama(
        vocab_size,
        hidden_size=64,
        num_layers=STUDENT_NUM_LAYERS,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=192,
    )


def default_teacher_config(vocab_size: int) -> LlamaConfig:
    """Return the default teacher: 4 wider Llama blocks, trained by ``splitkd prepare``.

    Parameters
    ----------
    vocab_size : int
        Size of the shared tokenizer's vocabulary (the same as the student's).

    Returns
    -------
    LlamaConfig
        Hidden size 128, 4 heads, untied embeddings, no dropout.
    """
    return _tiny_llama(
        vocab_size,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=384,
    )

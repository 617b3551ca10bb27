"""The byte-level BPE tokenizer that the default teacher and student share."""

import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from splitkd_flwr.core.errors import ConfigError, ModelError

# Added first, in this order, so their ids are the ones the default configs name.
SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "<pad>",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "unk_token": "<unk>",
}
DEFAULT_VOCAB_SIZE = 1024
_BYTE_ALPHABET = 256  # byte-level BPE starts from every byte, so no text is unknown

# The built-in tokenizer adds its specials in this order.
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Byte-level BPE encodes any text (a user's own included) without unknown tokens
    and decodes it back exactly. Training is deterministic for the same texts.

    Parameters
    ----------
    texts : Iterable[str]
        Training documents.
    vocab_size : int
        Final vocabulary size, specials and the 256 byte symbols included.

    Returns
    -------
    PreTrainedTokenizerFast
        With ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` at ids 0-3; save it with
        ``save_pretrained`` and load it with `load_tokenizer` or ``AutoTokenizer``.
    """
    minimum = _BYTE_ALPHABET + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ConfigError(f"vocab_size must be >= {minimum}, got {vocab_size}.")
    backend = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    ids = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert ids + (tokenizer.unk_token_id,) == (PAD_ID, BOS_ID, EOS_ID, UNK_ID)
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved with ``save_pretrained`` (ours or any Hugging Face one).

    Raises
    ------
    ModelError
        If ``path`` is not a directory holding a tokenizer.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelError(f"tokenizer directory {str(directory)!r} does not exist")
    try:
        return AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise ModelError(f"no loadable tokenizer in {str(directory)!r}: {err}") from err


def tokenizer_files(tokenizer: PreTrainedTokenizerBase) -> dict[str, bytes]:
    """The files ``save_pretrained`` writes for ``tokenizer``, by name."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {
            p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()
        }

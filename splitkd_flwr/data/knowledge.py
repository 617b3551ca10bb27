"""A split of the built-in corpus where the clients know what the server's proxy data does not.

KOALA can only pay off where the clients hold knowledge the server lacks: for language
models "unlabelled proxy data" is still next-token training data, so with a proxy drawn
from the clients' own distribution the server does better training on it directly. Here
the topics are divided:

- the **clients** hold whole dialogues of the client topics (`CLIENT_TOPICS`: the ones
  with facts, e.g. which road leads to which place, which artist sings which song, what a
  warning light means);
- the server's **proxy** holds whole dialogues of the other topics plus the clients'
  *prompts* (``"Driver: <request> Assistant:"``) of other client-topic dialogues, without
  their continuations: the server knows what clients are asked, not what they answer;
- the **held-out** set is client-topic dialogues seen by no one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.corpus import TOPICS, Document, generate_corpus
from splitkd_flwr.data.partition import dirichlet_partition

# The topics whose dialogues carry derived facts (via, song, advice) plus three more.
CLIENT_TOPICS: tuple[str, ...] = (
    "navigation",
    "media",
    "diagnostics",
    "maintenance",
    "messages",
    "weather",
)
ASSISTANT_MARK = " Assistant:"
HELD_OUT_DOCUMENTS = 600
PROMPT_DOCUMENTS = 2000
# Clients' partitions: non-IID over the client topics, as in `builtin_split`.
CLIENT_ALPHA = 1.0


@dataclass(frozen=True)
class KnowledgeSplit:
    """Texts of a knowledge split (see the module docstring); all parts disjoint."""

    clients: list[list[str]]  # per client, whole client-topic dialogues
    proxy_text: list[str]  # whole dialogues of the server topics
    proxy_prompts: list[str]  # client-topic first requests, ending in " Assistant:"
    held_out: list[str]  # client-topic dialogues seen by no one
    client_topics: tuple[str, ...]


def prompt_of(text: str) -> str:
    """The first request of a dialogue up to and including ``" Assistant:"``.

    Raises
    ------
    ConfigError
        If ``text`` has no assistant turn.
    """
    cut = text.find(ASSISTANT_MARK)
    if cut < 0:
        raise ConfigError(f"dialogue has no {ASSISTANT_MARK.strip()!r} turn: {text!r}")
    return text[: cut + len(ASSISTANT_MARK)]


def knowledge_split(
    num_clients: int,
    *,
    seed: int = 0,
    client_topics: Sequence[str] = CLIENT_TOPICS,
    documents: Sequence[Document] | None = None,
    held_out_documents: int = HELD_OUT_DOCUMENTS,
    prompt_documents: int = PROMPT_DOCUMENTS,
    alpha: float = CLIENT_ALPHA,
) -> KnowledgeSplit:
    """Divide the corpus by topic into client, proxy and held-out parts.

    Parameters
    ----------
    num_clients : int
        Client partitions (non-IID over the client topics, Dirichlet ``alpha``).
    seed : int
        Seed of the held-out/prompt/client draws; the text itself is the built-in corpus.
    client_topics : Sequence[str]
        Topics only the clients hold (each must be one of `corpus.TOPICS`; not all).
    documents : Sequence[Document] | None
        The corpus (default: `generate_corpus()`).
    held_out_documents, prompt_documents : int
        Client-topic dialogues held out from everyone / turned into proxy prompts.

    Raises
    ------
    ConfigError
        Unknown or all topics, or too few client-topic documents for the parts asked.
    """
    unknown = sorted(set(client_topics) - set(TOPICS))
    if unknown or not client_topics or set(client_topics) == set(TOPICS):
        raise ConfigError(
            f"client_topics must be a proper, non-empty subset of {TOPICS}, got {list(client_topics)}"
        )
    corpus = list(generate_corpus() if documents is None else documents)
    private = [d for d in corpus if d.topic in client_topics]
    public = [d.text for d in corpus if d.topic not in client_topics]
    needed = held_out_documents + prompt_documents + num_clients
    if len(private) < needed:
        raise ConfigError(
            f"{len(private)} client-topic documents cannot give {held_out_documents} held out, "
            f"{prompt_documents} prompts and {num_clients} clients"
        )
    order = np.random.default_rng(seed).permutation(len(private))
    held_out = [private[i].text for i in order[:held_out_documents]]
    prompts = [
        prompt_of(private[i].text)
        for i in order[held_out_documents : held_out_documents + prompt_documents]
    ]
    rest = [private[i] for i in order[held_out_documents + prompt_documents :]]
    parts = dirichlet_partition(
        [d.topic for d in rest], num_clients, alpha=alpha, seed=seed
    )
    return KnowledgeSplit(
        clients=[[rest[i].text for i in part] for part in parts],
        proxy_text=public,
        proxy_prompts=prompts,
        held_out=held_out,
        client_topics=tuple(client_topics),
    )

"""The knowledge split: clients hold topics the proxy has only as prompts."""

from __future__ import annotations

import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.corpus import generate_corpus
from splitkd_flwr.data.knowledge import CLIENT_TOPICS, knowledge_split, prompt_of

DOCS = generate_corpus(1500, seed=3)


def test_parts_are_disjoint_and_the_proxy_lacks_the_clients_answers() -> None:
    # Execute
    split = knowledge_split(
        3, seed=1, documents=DOCS, held_out_documents=100, prompt_documents=200
    )
    # Assert
    topic = {d.text: d.topic for d in DOCS}
    client_texts = [t for part in split.clients for t in part]
    assert all(topic[t] in CLIENT_TOPICS for t in client_texts + split.held_out)
    assert not any(topic[t] in CLIENT_TOPICS for t in split.proxy_text)
    assert len(split.held_out) == 100 and len(split.proxy_prompts) == 200
    # prompts are the first request only, and no prompt's dialogue reached a client
    assert all(
        p.startswith("Driver: ") and p.endswith(" Assistant:")
        for p in split.proxy_prompts
    )
    assert all(p.count("Assistant:") == 1 for p in split.proxy_prompts)
    # every client-topic document lands in exactly one part (short dialogues repeat
    # verbatim in the corpus, so this counts documents, not distinct texts)
    assert len(client_texts) + 100 + 200 == sum(d.topic in CLIENT_TOPICS for d in DOCS)
    assert len(split.clients) == 3 and all(split.clients)


def test_the_split_follows_the_seed() -> None:
    a = knowledge_split(
        2, seed=0, documents=DOCS, held_out_documents=50, prompt_documents=50
    )
    b = knowledge_split(
        2, seed=0, documents=DOCS, held_out_documents=50, prompt_documents=50
    )
    c = knowledge_split(
        2, seed=1, documents=DOCS, held_out_documents=50, prompt_documents=50
    )
    assert a == b and a.held_out != c.held_out


def test_bad_topics_and_sizes_are_refused() -> None:
    with pytest.raises(ConfigError, match="client_topics"):
        knowledge_split(2, client_topics=("gardening",), documents=DOCS)
    with pytest.raises(ConfigError, match="cannot give"):
        knowledge_split(2, documents=DOCS, held_out_documents=5000)
    with pytest.raises(ConfigError, match="Assistant"):
        prompt_of("Driver: hello")

"""Tests of the generated in-vehicle assistant corpus."""

import collections

from splitkd_flwr.data.corpus import TOPICS, generate_corpus


def test_same_seed_same_text() -> None:
    assert generate_corpus(200, seed=3) == generate_corpus(200, seed=3)


def test_different_seed_different_text() -> None:
    first = [d.text for d in generate_corpus(200, seed=0)]
    second = [d.text for d in generate_corpus(200, seed=1)]

    assert first != second
    assert len(set(first) & set(second)) < 100  # not a shuffled copy either


def test_documents_are_dialogues_tagged_with_known_topics() -> None:
    documents = generate_corpus(600)
    counts = collections.Counter(d.topic for d in documents)

    assert set(counts) == set(TOPICS)
    assert min(counts.values()) > 600 / len(TOPICS) / 2  # roughly uniform
    for document in documents:
        assert document.text.startswith("Driver: ") and " Assistant: " in document.text
        assert "\n" not in document.text and "{" not in document.text


def test_reply_repeats_the_slot_the_driver_named() -> None:
    # The learnable structure: what the driver asks for comes back in the reply.
    documents = [d for d in generate_corpus(2000) if d.topic == "media"]
    plays = [d.text for d in documents if d.text.startswith("Driver: Play ")]
    plays = [t for t in plays if " by " in t.split(" Assistant: ")[0]]

    assert plays
    for text in plays:
        request, reply = text.split(" Assistant: ")[:2]
        song_by_artist = request.removeprefix("Driver: Play ").split(".")[0]
        assert reply.startswith(f"Playing {song_by_artist}.")


def test_facts_are_consistent_across_documents() -> None:
    # A derived slot (here: a place's route) always takes the same value.
    routes: dict[str, set[str]] = collections.defaultdict(set)
    for document in generate_corpus(3000):
        for exchange in document.text.split("Assistant: Starting route to ")[1:]:
            place, rest = exchange.split(" via ", 1)
            routes[place].add(rest.split(". Arrival")[0])

    assert len(routes) > 5
    assert all(len(vias) == 1 for vias in routes.values())

"""Tests of the server / eval / non-IID device split of a corpus."""

import collections

import numpy as np
import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.corpus import generate_corpus
from splitkd_flwr.data.partition import dirichlet_partition, split_corpus

DOCUMENTS = generate_corpus(3000)


def _ids(documents) -> list[int]:
    index = {id(d): i for i, d in enumerate(DOCUMENTS)}
    return [index[id(d)] for d in documents]


def test_parts_are_disjoint_and_cover_the_corpus() -> None:
    split = split_corpus(DOCUMENTS, num_devices=5, seed=1)
    parts = [split.server, split.eval, *split.devices]
    ids = [i for part in parts for i in _ids(part)]

    assert len(ids) == len(DOCUMENTS) == len(set(ids))
    assert len(split.server) == int(0.3 * len(DOCUMENTS))
    assert len(split.eval) == int(0.1 * len(DOCUMENTS))
    assert all(split.devices)


def test_deterministic_given_seed() -> None:
    first = split_corpus(DOCUMENTS, num_devices=4, seed=7)
    again = split_corpus(DOCUMENTS, num_devices=4, seed=7)
    other = split_corpus(DOCUMENTS, num_devices=4, seed=8)

    assert first == again
    assert first.devices != other.devices


def test_server_and_eval_do_not_depend_on_device_settings() -> None:
    # One prepared teacher must fit every run, whatever its devices.
    a = split_corpus(DOCUMENTS, num_devices=3, seed=0, alpha=0.1)
    b = split_corpus(DOCUMENTS, num_devices=10, seed=5, alpha=100.0)

    assert a.server == b.server and a.eval == b.eval


def _topic_shares(devices, topics) -> np.ndarray:
    counts = [collections.Counter(d.topic for d in part) for part in devices]
    table = np.array([[c[t] for t in topics] for c in counts], dtype=float)
    return table / table.sum(axis=1, keepdims=True)  # (devices, topics)


def test_small_alpha_is_non_iid_large_alpha_near_iid() -> None:
    topics = sorted({d.topic for d in DOCUMENTS})
    skewed = split_corpus(DOCUMENTS, num_devices=6, alpha=0.3, seed=2).devices
    mixed = split_corpus(DOCUMENTS, num_devices=6, alpha=1000.0, seed=2).devices

    spread_skewed = _topic_shares(skewed, topics).std(axis=0).mean()
    spread_mixed = _topic_shares(mixed, topics).std(axis=0).mean()

    assert spread_skewed > 4 * spread_mixed
    assert spread_skewed > 0.05  # devices' topic mixes differ clearly


def test_min_documents_is_honoured() -> None:
    topics = [d.topic for d in DOCUMENTS[:300]]

    parts = dirichlet_partition(topics, 10, alpha=0.1, seed=0, min_documents=5)

    assert min(len(p) for p in parts) >= 5
    assert sorted(i for p in parts for i in p) == list(range(300))


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"num_devices": 0}, "0"),
        ({"num_devices": 2, "alpha": 0.0}, "0.0"),
        ({"num_devices": 2, "server_fraction": 0.7, "eval_fraction": 0.4}, "0.7"),
        ({"num_devices": 2, "eval_fraction": 1.5}, "1.5"),
        ({"num_devices": 5000}, "5000"),
    ],
)
def test_bad_settings_raise_config_error(kwargs: dict, bad: str) -> None:
    with pytest.raises(ConfigError, match=bad):
        split_corpus(DOCUMENTS, **kwargs)

"""Split a corpus into a server part, a held-out set and non-IID device partitions."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.corpus import CORPUS_SEED, Document, generate_corpus

SERVER_FRACTION = 0.3  # the server's part: teacher training, KOALA proxy data
EVAL_FRACTION = 0.1  # held out from everyone
DIRICHLET_ALPHA = 0.5  # smaller: each device sees fewer topics
_MAX_DRAWS = 100  # Dirichlet draws tried before giving up on min_documents


@dataclass(frozen=True)
class CorpusSplit:
    """A corpus in disjoint parts: server, held-out evaluation, one list per device."""

    server: list[Document]
    eval: list[Document]
    devices: list[list[Document]]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}.")


def dirichlet_partition(
    topics: Sequence[str],
    num_devices: int,
    *,
    alpha: float = DIRICHLET_ALPHA,
    seed: int = 0,
    min_documents: int = 1,
) -> list[list[int]]:
    """Assign item indices to devices, non-IID over topics (Hsu et al., 2019).

    For each topic, device shares are drawn from ``Dirichlet(alpha, ..., alpha)`` and
    that topic's items are cut in those shares. ``alpha -> 0`` gives each device few
    topics; ``alpha -> inf`` approaches an IID split. Draws repeat (with the same
    generator, so still deterministic) until every device holds ``min_documents``.

    Parameters
    ----------
    topics : Sequence[str]
        The topic of each item.
    num_devices : int
        Number of partitions, >= 1.
    alpha : float
        Dirichlet concentration, > 0.
    seed : int
        Seed of the draws; the same inputs and seed always give the same partition.
    min_documents : int
        Smallest partition accepted.

    Returns
    -------
    list[list[int]]
        Per device, sorted indices into ``topics``; disjoint, covering every index.
    """
    if num_devices < 1:
        raise ConfigError(f"num_devices must be >= 1, got {num_devices}.")
    if not alpha > 0.0:
        raise ConfigError(f"Dirichlet alpha must be > 0, got {alpha}.")
    if num_devices * min_documents > len(topics):
        raise ConfigError(
            f"{len(topics)} documents cannot give {num_devices} devices "
            f"{min_documents} each."
        )
    rng = np.random.default_rng(seed)
    labels = np.asarray(topics)
    by_topic = [np.flatnonzero(labels == t) for t in sorted(set(topics))]
    for _ in range(_MAX_DRAWS):
        parts: list[list[int]] = [[] for _ in range(num_devices)]
        for indices in by_topic:
            shares = rng.dirichlet(np.full(num_devices, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
            for device, chunk in enumerate(np.split(rng.permutation(indices), cuts)):
                parts[device].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_documents:
            return [sorted(p) for p in parts]
    raise ConfigError(
        f"no Dirichlet(alpha={alpha}) draw gave all {num_devices} devices "
        f">= {min_documents} documents in {_MAX_DRAWS} tries; raise alpha."
    )


def split_corpus(
    documents: Sequence[Document],
    num_devices: int,
    *,
    alpha: float = DIRICHLET_ALPHA,
    seed: int = 0,
    server_fraction: float = SERVER_FRACTION,
    eval_fraction: float = EVAL_FRACTION,
    holdout_seed: int = CORPUS_SEED,
) -> CorpusSplit:
    """Split ``documents`` into server, eval and ``num_devices`` device parts.

    The server and eval parts are IID random subsets chosen by ``holdout_seed`` alone:
    they do not change with ``num_devices``, ``alpha`` or ``seed``, so one prepared
    teacher fits every run. The rest goes to the devices by `dirichlet_partition`.

    Returns
    -------
    CorpusSplit
        Disjoint parts that together hold every document once.
    """
    _check_fraction("server_fraction", server_fraction)
    _check_fraction("eval_fraction", eval_fraction)
    if server_fraction + eval_fraction >= 1.0:
        raise ConfigError(
            f"server_fraction + eval_fraction must be < 1, got "
            f"{server_fraction} + {eval_fraction}."
        )
    order = np.random.default_rng(holdout_seed).permutation(len(documents))
    num_server = int(server_fraction * len(documents))
    num_eval = int(eval_fraction * len(documents))
    server = [documents[i] for i in sorted(order[:num_server])]
    held_out = [documents[i] for i in sorted(order[num_server : num_server + num_eval])]
    rest = [documents[i] for i in sorted(order[num_server + num_eval :])]
    topics = [d.topic for d in rest]
    parts = dirichlet_partition(topics, num_devices, alpha=alpha, seed=seed)
    devices = [[rest[i] for i in part] for part in parts]
    return CorpusSplit(server, held_out, devices)


def builtin_split(
    num_devices: int, *, alpha: float = DIRICHLET_ALPHA, seed: int = 0
) -> CorpusSplit:
    """The built-in corpus split for ``num_devices`` (server and eval parts fixed)."""
    return split_corpus(generate_corpus(), num_devices, alpha=alpha, seed=seed)

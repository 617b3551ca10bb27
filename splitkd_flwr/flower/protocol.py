"""The control-plane contract both modes share: the profile query, plan records, tokenizer files.

``query.profile`` to a node -> ``profile`` ConfigRecord: ``partition-id``, ``device`` (a
device-profile name) and ``assets-key`` (the split-KD assets it holds, "" if none). A plan
(one dataclass per mode) travels as a ConfigRecord with hyphenated keys; a tokenizer
travels as two parallel lists (``tokenizer-files``, ``tokenizer-data``) because devices
have no model hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from flwr.app import ConfigRecord

from splitkd_flwr.core.errors import ModelError
from splitkd_flwr.core.records import from_hyphenated, to_hyphenated

QUERY_PROFILE = "query.profile"
PROFILE = "profile"
METRICS = "metrics"


class PlanRecord:
    """A frozen dataclass that travels as a ConfigRecord with hyphenated keys."""

    def to_record(self) -> ConfigRecord:
        """Encode as a ConfigRecord with hyphenated keys."""
        return ConfigRecord(to_hyphenated(self))

    @classmethod
    def from_record(cls, record: ConfigRecord) -> Self:
        """Decode; a missing, unknown or mistyped key is a ConfigError naming it."""
        return from_hyphenated(cls, dict(record))


def tokenizer_record(files: dict[str, bytes]) -> dict[str, list[str] | list[bytes]]:
    """ConfigRecord entries carrying tokenizer files (``tokenizer-files``, ``tokenizer-data``)."""
    return {"tokenizer-files": list(files), "tokenizer-data": list(files.values())}


def write_tokenizer(record: ConfigRecord, directory: Path, source: str) -> Path:
    """Write the tokenizer files a record carries into ``directory``; refuse unsafe names."""
    names = [str(n) for n in record["tokenizer-files"]]  # type: ignore[union-attr]
    blobs = list(record["tokenizer-data"])  # type: ignore[arg-type]
    if len(names) != len(blobs) or any(
        "/" in n or "\\" in n or n.startswith(".") for n in names
    ):
        raise ModelError(f"malformed tokenizer files in {source}: {names}")
    directory.mkdir(parents=True, exist_ok=True)
    for name, blob in zip(names, blobs, strict=True):
        (directory / name).write_bytes(blob)  # type: ignore[arg-type]
    return directory

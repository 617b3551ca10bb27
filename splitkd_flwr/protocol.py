"""The control-plane contract: Flower message types and record keys shared by both apps.

One run, as the server sees it:

1. ``query.profile`` to every node -> ``profile`` ConfigRecord: ``partition-id``,
   ``device`` (a device-profile name), ``assets-key`` (the provisioned assets it holds).
2. ``query.provision`` to nodes whose ``assets-key`` differs from the server's ->
   ``assets`` ConfigRecord (student config, tokenizer files, ``assets-key``) and
   ``teacher-embedding`` ArrayRecord. Devices never receive teacher blocks.
3. Per round, ``train`` to ONE node -> ``plan`` ConfigRecord (see :class:`RoundPlan`) and
   ``device-weights`` ArrayRecord (student weights of the device side, layers < cut).
   The reply carries ``device-weights`` (updated) and ``metrics`` MetricRecord.
4. At the end, ``evaluate`` to every node -> ``student`` ArrayRecord (the whole distilled
   student, which the device keeps: deployment) -> ``metrics`` of the student on its data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Self

from flwr.app import ConfigRecord

from splitkd_flwr.errors import ConfigError

QUERY_PROFILE = "query.profile"
QUERY_PROVISION = "query.provision"
TRAIN = "train"
EVALUATE = "evaluate"

PROFILE = "profile"
ASSETS = "assets"
TEACHER_EMBEDDING = "teacher-embedding"
PLAN = "plan"
DEVICE_WEIGHTS = "device-weights"
STUDENT = "student"
EVAL_CONFIG = "eval-config"
METRICS = "metrics"


class PlanRecord:
    """A frozen dataclass that travels as a ConfigRecord with hyphenated keys."""

    def to_record(self) -> ConfigRecord:
        """Encode as a ConfigRecord with hyphenated keys."""
        return ConfigRecord(
            {
                f.name.replace("_", "-"): getattr(self, f.name)
                for f in dataclasses.fields(self)  # type: ignore[arg-type]
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> Self:
        """Decode; a missing or mistyped key is a ConfigError naming it."""
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = f.name.replace("_", "-")
            if key not in record:
                raise ConfigError(f"{cls.__name__} lacks {key!r}")
            value = record[key]
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            if kind is float and isinstance(value, int):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(
                    f"{cls.__name__} {key!r} must be {kind.__name__}, got {value!r}"
                )
            values[f.name] = value
        return cls(**values)


@dataclass(frozen=True)
class RoundPlan(PlanRecord):
    """What the device needs to run its side of one round (the ``plan`` ConfigRecord)."""

    server_round: int
    cut_layer: int
    local_epochs: int
    max_batches_per_epoch: int
    batch_size: int
    seq_len: int
    device_lr: float
    wire_dtype: str
    address: str  # data-plane host:port to dial
    token: str  # one-time round token
    frame_timeout_s: float
    seed: int
    tls_root_cert: str  # PEM the device trusts for the data plane ("" = no TLS)

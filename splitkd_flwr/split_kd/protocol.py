"""The control-plane contract: Flower message types and record keys shared by both apps.

One run, as the server sees it:

1. ``query.profile`` (shared with KOALA, :mod:`splitkd_flwr.flower.protocol`) to every node -> ``profile`` ConfigRecord: ``partition-id``,
   ``device`` (a device-profile name), ``assets-key`` (the provisioned assets it holds).
2. ``query.provision`` to nodes whose ``assets-key`` differs from the server's ->
   ``assets`` ConfigRecord (student config, tokenizer files, ``assets-key``) and
   ``teacher-embedding`` ArrayRecord. Devices never receive teacher blocks.
3. Per round, ``train`` to ONE node -> ``plan`` ConfigRecord (see :class:`RoundPlan`) and
   ``device-weights`` ArrayRecord (student weights of the device side, layers < cut).
   The reply carries ``device-weights`` (updated) and ``metrics`` MetricRecord.
   With ``device-private-layers = m > 0`` both ``device-weights`` leave out the student's
   input embeddings and blocks < m: the device keeps its own (``private-layers.safetensors``
   in its cache dir), initialised once from ``private-init`` (the initial weights, which
   the server sends until the node has committed a round of this run, and again after a
   failed round of it), plus its own secret noise with ``plan.private-init-noise``.
4. At the end, ``evaluate`` to every node -> ``student`` ArrayRecord (the whole distilled
   student, which the device keeps: deployment) -> ``metrics`` of the student on its data.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitkd_flwr.flower.protocol import METRICS, PROFILE, QUERY_PROFILE, PlanRecord

QUERY_PROVISION = "query.provision"
TRAIN = "train"
EVALUATE = "evaluate"

ASSETS = "assets"
TEACHER_EMBEDDING = "teacher-embedding"
PLAN = "plan"
DEVICE_WEIGHTS = "device-weights"
PRIVATE_INIT = "private-init"
STUDENT = "student"
EVAL_CONFIG = "eval-config"

__all__ = ["METRICS", "PROFILE", "QUERY_PROFILE", "PlanRecord", "RoundPlan"]


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
    train_precision: str  # "fp32" or "bf16-mixed"
    gradient_checkpointing: bool
    lora_rank: int  # 0: full fine-tuning; else device-weights are the adapters only
    lora_alpha: float
    lora_dropout: float
    lora_targets: str  # comma-separated; "" = the family's default projections
    # "u-shape": the device also trains the final norm and LM head and computes the loss
    # (the kd-* keys below); its device-weights then include the head.
    split_mode: str
    kd_alpha: float
    kd_temperature: float
    kd_divergence: str
    kd_beta: float
    smashed_noise: float  # d_chi-privacy epsilon on what the device sends (0: none)
    # the device keeps embeddings and blocks < m to itself (0: none)
    device_private_layers: int
    # relative std of the secret noise a device adds to private-init once per run (0: none)
    private_init_noise: float = 0.0

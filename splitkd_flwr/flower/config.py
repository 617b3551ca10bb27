"""The run configuration: every `[tool.flwr.app.config]` key, typed, documented, checked once."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from splitkd_flwr.core.constants import (
    DEVICE_SPEC_PATTERN,
    DIVERGENCES,
    MODES,
    SPLIT_MODES,
    TEACHER_DEVICE_MAPS,
    TEACHER_DTYPES,
    TRAIN_PRECISIONS,
    VEHICLE_PARTITIONERS,
    WIRE_DTYPES,
)
from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.core.records import from_hyphenated, hyphenated, to_hyphenated


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class RunConfig:
    """One run of splitkd-flwr, built from ``context.run_config`` (hyphenated keys).

    Each field is one key of ``[tool.flwr.app.config]`` (``num_rounds`` <-> ``num-rounds``);
    the README's configuration table is this class's help texts.
    """

    mode: str = _help(
        "`split-kd` (the paper's split KD) or `koala` (federated knowledge transfer)",
        "split-kd",
    )
    num_rounds: int = _help(
        "training rounds; one device trains with the server per round", 10
    )
    local_epochs: int = _help(
        "passes of the selected device over its local data per round", 1
    )
    max_batches_per_epoch: int = _help(
        "cap on mini-batches per local epoch (0: the whole partition; the modelled cost then assumes 1)",
        16,
    )
    batch_size: int = _help("sequences per mini-batch", 8)
    seq_len: int = _help(
        "tokens per sequence (longer texts are chunked, shorter padded)", 64
    )
    device_lr: float = _help(
        "AdamW learning rate of the device-side student layers", 3e-3
    )
    server_lr: float = _help(
        "AdamW learning rate of the server-side student layers", 3e-3
    )
    kd_alpha: float = _help(
        "weight of cross-entropy; `1 - kd-alpha` weighs T^2 * divergence", 0.5
    )
    kd_temperature: float = _help(
        "softmax temperature T of the distillation term (see README, Figures)",
        2.0,
    )
    kd_divergence: str = _help(
        "`forward-kl` (KL(teacher||student)), `reverse-kl` or `jsd`", "forward-kl"
    )
    kd_beta: float = _help(
        "JSD mixture weight (only for `jsd`; 0 = forward KL, 1 = reverse KL)", 0.5
    )
    koala_prompts: int = _help(
        "KOALA: proxy prompts the small models answer per round for sequence-level KD (0: off)",
        64,
    )
    koala_max_new_tokens: int = _help(
        "KOALA: most tokens of a small model's answer to a prompt", 24
    )
    koala_top_k: int = _help(
        "KOALA: top-k log-probs kept per token of each small model's soft labels (0: all)",
        0,
    )
    cut_layer: int = _help(
        "cut for the `fixed` planner: device runs student blocks [0, cut)", 4
    )
    selector: str = _help(
        "device selector: a registered name or `package.module:Class`", "round-robin"
    )
    planner: str = _help(
        "`energy-optimal`, `server-only`, `device-only`, `fixed` or `package.module:Class`",
        "energy-optimal",
    )
    delay_bound_s: float = _help(
        "round delay bound of the modelled round for `energy-optimal` (0: none)", 0.0
    )
    cluster_size: int = _help(
        "devices per round, trained in parallel (SFLv1, docs/case-study.md); 1: one at a time",
        1,
    )
    cluster_selector: str = _help(
        "who trains together when `cluster-size` > 1: `by-speed`, `in-order`, `random` "
        "or `package.module:Class`",
        "by-speed",
    )
    scenario: str = _help(
        "`paper`: modelled 5G NR links and Table II hardware per vehicle; `none`: no model",
        "paper",
    )
    scenario_noise: str = _help(
        "noise PSD: `good` / `normal` / `poor` (-166 / -163 / -160 dBm/Hz) or a number",
        "normal",
    )
    scenario_fleet: str = _help(
        "TOML of device profiles (see docs/case-study.md); empty: paper Table II", ""
    )
    scenario_round_interval_s: float = _help(
        "mobility time between round starts in the modelled world", 10.0
    )
    server_clock: str = _help(
        "apply the planned server GPU clock: `auto`, `nvml` or `none`", "auto"
    )
    server_energy_meter: str = _help(
        "server energy meter: `auto`, `nvml` or `none`", "auto"
    )
    min_nodes: int = _help("devices that must be connected before round 1 starts", 1)
    eval_data: str = _help(
        "server's held-out text (.txt/.jsonl/dir) or `builtin`", "builtin"
    )
    vehicle_data: str = _help(
        "simulated vehicles' text: a directory with one file/sub-directory per vehicle, or "
        "one corpus (.txt/.jsonl/.parquet/`datasets` directory) the run partitions; "
        "empty: built-in",
        "",
    )
    vehicle_partitioner: str = _help(
        "`auto`, `by-entry`, `iid`, `dirichlet` or `column` (flwr-datasets partitioners)",
        "auto",
    )
    vehicle_partition_by: str = _help(
        "column the `dirichlet` / `column` partitioner splits by", ""
    )
    vehicle_dirichlet_alpha: float = _help(
        "concentration of the `dirichlet` partitioner (small: more skew)", 0.5
    )
    teacher: str = _help(
        "teacher directory (`save_pretrained` layout) or `default`", "default"
    )
    student: str = _help("initial student directory or `default`", "default")
    wire_dtype: str = _help(
        "float tensors on the data plane: `fp32`, `fp16`, `bf16`, `int8` (per-channel absmax)",
        "fp32",
    )
    split_mode: str = _help(
        "`seed` (the paper's split: labels go to the server) or `u-shape` (head, loss and "
        "labels stay on the device; not enough to hide the text, see README, What the edge "
        "server can learn)",
        "seed",
    )
    teacher_top_k: int = _help(
        "`u-shape`: teacher soft labels sent down as top-k log-probs + tail (0: full logits)",
        0,
    )
    device_private_layers: int = _help(
        "the device's first m student layers (input embeddings and blocks 0..m-1) "
        "train on the device and are never uploaded; every planner then cuts above "
        "them (`fixed`: needs cut-layer > m); not with LoRA or cluster-size > 1; the "
        "server still holds their initial weights, so a device's first round is "
        "exposed (0: none)",
        0,
    )
    private_init_noise: float = _help(
        "`device-private-layers`: relative std of Gaussian noise each device adds to "
        "the initial private layers once per run, from a seed only it holds, so that "
        "the server's copy is not exact in the device's first round (0: none)",
        0.0,
    )
    smashed_noise: float = _help(
        "epsilon of d_chi-privacy noise per token on the teacher embeddings and student "
        "hidden state a device sends (smaller: more noise; 0: none)",
        0.0,
    )
    data_plane_bind: str = _help(
        "host:port the server's data plane listens on (port 0: any free port)",
        "127.0.0.1:0",
    )
    data_plane_address: str = _help(
        "host:port devices dial (empty: the bound address)", ""
    )
    data_plane_certfile: str = _help(
        "PEM certificate of the data plane (empty: no TLS; loopback only)", ""
    )
    data_plane_keyfile: str = _help("PEM private key of that certificate", "")
    frame_timeout_s: float = _help(
        "a device or server silent this long ends the round", 60.0
    )
    round_timeout_s: float = _help(
        "upper bound on one round's Flower message round trip", 1800.0
    )
    eval_batches: int = _help(
        "held-out mini-batches the server evaluates per round (0: all)", 8
    )
    threads: int = _help(
        "torch/OpenMP threads of each process (server, every device), set by the apps "
        "themselves (0: torch's default)",
        1,
    )
    output_dir: str = _help(
        "where metrics, the config and the final student are written", "outputs"
    )
    seed: int = _help("seed for data partitioning, selection and initialisation", 0)
    resume: bool = _help(
        "continue the run in `output-dir` after its newest checkpoint (a round in flight is redone)",
        False,
    )
    checkpoint_every: int = _help(
        "save a checkpoint (student, optimizer, round, RNG, metrics) every N rounds and after the last (0: never)",
        1,
    )
    server_device: str = _help(
        "where the teacher and the server's student part run: `auto` (first accelerator, "
        "else CPU), `cpu`, `cuda`, `cuda:N`, `mps`",
        "auto",
    )
    teacher_dtype: str = _help(
        "teacher weights: `auto` (bf16 on an accelerator that has it, else fp32), "
        "`fp32`, `bf16`, `fp16`; also the provisioned embedding table's dtype",
        "auto",
    )
    train_precision: str = _help(
        "`fp32` or `bf16-mixed` (bf16 autocast; fp32 master weights and optimizer state)",
        "fp32",
    )
    lora_rank: int = _help(
        "LoRA rank of the student's adapters (peft); 0 = full fine-tuning", 0
    )
    lora_alpha: float = _help(
        "LoRA scale numerator: adapters add alpha/rank * BA", 16.0
    )
    lora_dropout: float = _help("dropout on the LoRA adapters' input", 0.0)
    lora_targets: str = _help(
        "comma-separated module names that get adapters (empty: attention and MLP "
        "projections)",
        "",
    )
    gradient_checkpointing: bool = _help(
        "recompute student block activations in backward (both sides) to save memory",
        False,
    )
    teacher_device_map: str = _help(
        "`none` (teacher on server-device) or `auto` (accelerate shards it over the GPUs)",
        "none",
    )

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, allowed: str) -> None:
            value = getattr(self, key.replace("-", "_"))
            if not ok:
                raise ConfigError(f"{key} must be {allowed}, got {value!r}")

        need(self.mode in MODES, "mode", f"one of {MODES}")
        need(self.num_rounds >= 1, "num-rounds", ">= 1")
        need(self.local_epochs >= 1, "local-epochs", ">= 1")
        need(self.max_batches_per_epoch >= 0, "max-batches-per-epoch", ">= 0")
        need(self.batch_size >= 1, "batch-size", ">= 1")
        need(self.seq_len >= 2, "seq-len", ">= 2")
        need(self.device_lr > 0, "device-lr", "> 0")
        need(self.server_lr > 0, "server-lr", "> 0")
        need(self.cluster_size >= 1, "cluster-size", ">= 1")
        need(0.0 <= self.kd_alpha <= 1.0, "kd-alpha", "in [0, 1]")
        need(self.kd_temperature > 0, "kd-temperature", "> 0")
        need(
            self.kd_divergence in DIVERGENCES, "kd-divergence", f"one of {DIVERGENCES}"
        )
        need(0.0 <= self.kd_beta <= 1.0, "kd-beta", "in [0, 1]")
        need(self.koala_prompts >= 0, "koala-prompts", ">= 0")
        need(self.koala_max_new_tokens >= 1, "koala-max-new-tokens", ">= 1")
        need(self.koala_top_k >= 0, "koala-top-k", ">= 0")
        need(self.delay_bound_s >= 0, "delay-bound-s", ">= 0")
        need(self.scenario in ("paper", "none"), "scenario", "`paper` or `none`")
        need(self.scenario_round_interval_s >= 0, "scenario-round-interval-s", ">= 0")
        need(
            self.server_clock in ("auto", "nvml", "none"),
            "server-clock",
            "`auto`, `nvml` or `none`",
        )
        need(
            self.server_energy_meter in ("auto", "nvml", "none"),
            "server-energy-meter",
            "`auto`, `nvml` or `none`",
        )
        need(self.min_nodes >= 1, "min-nodes", ">= 1")
        need(self.cut_layer >= 1, "cut-layer", ">= 1")
        need(self.wire_dtype in WIRE_DTYPES, "wire-dtype", f"one of {WIRE_DTYPES}")
        need(self.split_mode in SPLIT_MODES, "split-mode", f"one of {SPLIT_MODES}")
        need(self.teacher_top_k >= 0, "teacher-top-k", ">= 0")
        need(self.smashed_noise >= 0, "smashed-noise", ">= 0")
        need(_is_host_port(self.data_plane_bind), "data-plane-bind", "'host:port'")
        need(
            not self.data_plane_address or _is_host_port(self.data_plane_address),
            "data-plane-address",
            "'host:port' or empty",
        )
        need(
            bool(self.data_plane_certfile) == bool(self.data_plane_keyfile),
            "data-plane-keyfile",
            "given together with data-plane-certfile",
        )
        need(self.frame_timeout_s > 0, "frame-timeout-s", "> 0")
        need(self.round_timeout_s > 0, "round-timeout-s", "> 0")
        need(self.eval_batches >= 0, "eval-batches", ">= 0")
        need(self.threads >= 0, "threads", ">= 0")
        need(
            self.vehicle_partitioner in VEHICLE_PARTITIONERS,
            "vehicle-partitioner",
            f"one of {VEHICLE_PARTITIONERS}",
        )
        need(self.vehicle_dirichlet_alpha > 0, "vehicle-dirichlet-alpha", "> 0")
        need(self.checkpoint_every >= 0, "checkpoint-every", ">= 0")
        need(
            bool(re.match(DEVICE_SPEC_PATTERN, self.server_device)),
            "server-device",
            "auto, cpu, cuda, cuda:N or mps",
        )
        need(
            self.teacher_dtype in TEACHER_DTYPES,
            "teacher-dtype",
            f"one of {TEACHER_DTYPES}",
        )
        need(
            self.train_precision in TRAIN_PRECISIONS,
            "train-precision",
            f"one of {TRAIN_PRECISIONS}",
        )
        need(self.lora_rank >= 0, "lora-rank", ">= 0")
        self._check_private_layers()
        need(self.lora_alpha > 0, "lora-alpha", "> 0")
        need(0.0 <= self.lora_dropout < 1.0, "lora-dropout", "in [0, 1)")
        need(
            self.teacher_device_map in TEACHER_DEVICE_MAPS,
            "teacher-device-map",
            f"one of {TEACHER_DEVICE_MAPS}",
        )
        need(
            self.cluster_size <= 1
            or (self.lora_rank == 0 and self.train_precision == "fp32"),
            "cluster-size",
            "1 with lora-rank > 0 or train-precision bf16-mixed (clustered rounds "
            "train a plain fp32 student)",
        )
        need(
            self.cluster_size <= 1 or self.split_mode == "seed",
            "cluster-size",
            "1 with split-mode u-shape (clustered rounds run the seed split)",
        )
        need(
            self.split_mode == "seed" or self.lora_rank == 0,
            "lora-rank",
            "0 with split-mode u-shape (the device's head has no LoRA path yet)",
        )

    def _check_private_layers(self) -> None:
        """Private device layers need a cut above them in every round: the planners are
        given the shallowest cut allowed (and the round refuses any other); a `fixed`
        cut is checked here. LoRA (a frozen provisioned base) and clustered rounds (one
        shared device part) do not keep per-device layers."""
        m = self.device_private_layers
        if m < 0:
            raise ConfigError(f"device-private-layers must be >= 0, got {m}")
        if not self.private_init_noise >= 0:
            raise ConfigError(
                f"private-init-noise must be >= 0, got {self.private_init_noise}"
            )
        if m == 0:
            return
        refusals = [
            (
                self.planner == "fixed" and self.cut_layer <= m,
                f"cut-layer > {m} with planner `fixed`",
            ),
            (self.lora_rank > 0, "lora-rank 0 (LoRA devices keep no private layers)"),
            (
                self.cluster_size > 1,
                "cluster-size 1 (a cluster's devices share one device part)",
            ),
        ]
        for refused, need in refusals:
            if refused:
                raise ConfigError(
                    f"device-private-layers = {m} needs: {need} (got planner="
                    f"{self.planner!r}, cut-layer={self.cut_layer}, split-mode="
                    f"{self.split_mode!r}, lora-rank={self.lora_rank}, "
                    f"cluster-size={self.cluster_size})"
                )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build from Flower's ``context.run_config``; unknown keys and bad types are errors."""
        return from_hyphenated(cls, run_config, partial=True, what="run-config")

    def to_run_config(self) -> dict[str, Any]:
        """The hyphenated-key mapping (saved beside the student, sent to clients)."""
        return to_hyphenated(self)


def config_keys() -> list[str]:
    """All run-config keys, hyphenated, in declaration order."""
    return [hyphenated(f.name) for f in dataclasses.fields(RunConfig)]


def config_table() -> str:
    """The README's Markdown table of keys, defaults and meanings."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(RunConfig):
        default = f'`"{f.default}"`' if isinstance(f.default, str) else f"`{f.default}`"
        rows.append(f"| `{hyphenated(f.name)}` | {default} | {f.metadata['help']} |")
    return "\n".join(rows)


def _is_host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 <= int(port) <= 65535)

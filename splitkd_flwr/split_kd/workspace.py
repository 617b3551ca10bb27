"""Everything a run's server side is built from, resolved once from the run config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from splitkd_flwr.core.constants import WIRE_BYTES
from splitkd_flwr.core.types import DeviceState, Workload
from splitkd_flwr.data.tokenizer import load_tokenizer
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.run import held_out_batches, resolve_models
from splitkd_flwr.simulation.scenario import Scenario, ScenarioConfig
from splitkd_flwr.split.lora import LoraSpec
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.models import check_pair, load_causal_lm, num_layers
from splitkd_flwr.split.placement import resolve_device
from splitkd_flwr.split.precision import (
    autocast_dtype,
    enable_gradient_checkpointing,
    student_base_dtype,
    teacher_dtype,
)
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split_kd.assets import DeviceAssets


@dataclass
class Workspace:
    """The loaded teacher, student and tokenizer of a run, and builders for what they feed."""

    config: RunConfig
    teacher: PreTrainedModel
    student: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @classmethod
    def load(cls, config: RunConfig) -> Workspace:
        """Load teacher, student and tokenizer (the teacher's directory holds the tokenizer).

        Both models are placed on ``server-device`` (the teacher sharded by accelerate
        with ``teacher-device-map = auto``) in their configured dtypes.
        """
        teacher_dir, student_dir, tokenizer_dir = resolve_models(config)
        device = resolve_device(config.server_device, "server-device")
        sharded = config.teacher_device_map == "auto"
        teacher = load_causal_lm(
            teacher_dir,
            dtype=teacher_dtype(config.teacher_dtype, device),
            device_map="auto" if sharded else None,
        )
        if not sharded:
            teacher.to(device)
        lora = config.lora_rank > 0
        base_dtype = student_base_dtype(lora, config.train_precision)
        student = load_causal_lm(student_dir, dtype=base_dtype).to(device)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(student)
        tokenizer = load_tokenizer(tokenizer_dir)
        check_pair(teacher, student)
        return cls(config, teacher, student, tokenizer)

    def lora_spec(self) -> LoraSpec | None:
        """The student's LoRA recipe (None: full fine-tuning)."""
        c = self.config
        return LoraSpec.from_keys(
            c.lora_rank, c.lora_alpha, c.lora_dropout, c.lora_targets
        )

    def split_server(self) -> SplitServer:
        """The server's side of the run: global student (LoRA if configured), teacher."""
        return SplitServer(
            self.teacher,
            self.student,
            self.loss_fn(),
            self.config.server_lr,
            lora=self.lora_spec(),
            autocast_dtype=autocast_dtype(self.config.train_precision),
            private_layers=self.config.device_private_layers,
        )

    def loss_fn(self) -> KDLoss:
        """The KD loss the run config describes."""
        c = self.config
        return KDLoss(
            alpha=c.kd_alpha,
            temperature=c.kd_temperature,
            divergence=c.kd_divergence,
            beta=c.kd_beta,
        )

    def eval_batches(self) -> list[dict[str, torch.Tensor]]:
        """Held-out mini-batches, fixed for the run (``eval-batches`` of them, 0 = all)."""
        return held_out_batches(self.config, self.tokenizer)

    def workload(self) -> Workload:
        """The round's work as the planner sizes it (trained student, modelled as configured)."""
        c = self.config
        return Workload(
            num_student_layers=num_layers(self.student),
            batch_size=c.batch_size,
            seq_len=c.seq_len,
            # Unknown partition sizes (max-batches-per-epoch = 0) are modelled as one batch.
            batches_per_round=c.local_epochs * max(c.max_batches_per_epoch, 1),
            wire_bytes_per_element=WIRE_BYTES[c.wire_dtype],
            # The paper's world prices the Llama-3.2-1B / Llama-3.1-8B pair (cost.py's defaults)
            # at the trained student's depth, so a cut index means the same block in both;
            # without it the trained models themselves are priced.
            student_config={}
            if c.scenario == "paper"
            else self.student.config.to_dict(),
            teacher_config={}
            if c.scenario == "paper"
            else self.teacher.config.to_dict(),
            lora_rank=c.lora_rank,
            mixed_precision=c.train_precision == "bf16-mixed",
            # The paper's server is a GPU, where teacher-dtype auto means bf16.
            teacher_bytes_per_element=2
            if c.scenario == "paper" and c.teacher_dtype == "auto"
            else self.teacher.dtype.itemsize,
            gradient_checkpointing=c.gradient_checkpointing,
            memory_limits=True,
            split_mode=c.split_mode,
            teacher_top_k=c.teacher_top_k,
        )

    def device_assets(
        self, student_base: dict[str, torch.Tensor] | None = None
    ) -> DeviceAssets:
        """What devices are provisioned with: student config, tokenizer, teacher embedding
        (in the teacher's dtype) and, for LoRA, the student's frozen base weights
        (``SplitServer.device_base_state``)."""
        return DeviceAssets.pack(
            self.student.config.to_json_string(),
            self.tokenizer,
            self.teacher.get_input_embeddings().weight,
            student_base,
        )

    def scenario(self) -> Scenario | None:
        """The modelled world (5G NR links, Table II hardware), or None for ``scenario = "none"``."""
        c = self.config
        if c.scenario == "none":
            return None
        return Scenario(
            ScenarioConfig(
                fleet=c.scenario_fleet,
                noise=c.scenario_noise,
                round_interval_s=c.scenario_round_interval_s,
                seed=c.seed,
            )
        )

    def planner_options(self) -> dict[str, object]:
        """Keyword options for the planner: the fleet the cost model prices devices with."""
        return {"fleet": self.config.scenario_fleet or None}

    def link_fn(self) -> Callable[[DeviceState, int], DeviceState] | None:
        """Fills in each device's modelled link, hardware and energy budget per round
        (simulation), or None."""
        scenario = self.scenario()
        if scenario is None:
            return None

        def with_link(device: DeviceState, server_round: int) -> DeviceState:
            modelled = scenario.device_state(
                device.partition_id % scenario.num_devices, server_round
            )
            # A budget the device's node config gave wins over the fleet file's.
            budget_j = device.energy_budget_j
            if budget_j is None:
                budget_j = scenario.fleet.energy_budget_of(device.partition_id)
            return replace(
                device,
                profile_name=modelled.profile_name,
                uplink_bps=modelled.uplink_bps,
                downlink_bps=modelled.downlink_bps,
                snr_db=modelled.snr_db,
                energy_budget_j=budget_j,
            )

        return with_link

"""The device side of split KD: profile, provisioning, one split round per `train`, deployment.

Handlers of the ClientApp (:mod:`splitkd_flwr.client_app` registers them); the contract
is :mod:`splitkd_flwr.split_kd.protocol`.
"""

from __future__ import annotations

import time

import torch
from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from splitkd_flwr.core.errors import ModelError
from splitkd_flwr.flower.device_data import (
    device_batches,
    device_eval_batches,
    load_device_tokenizer,
)
from splitkd_flwr.flower.node_config import NodeConfig
from splitkd_flwr.hardware.monitor import HardwareMonitor
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.lora import LoraSpec, add_lora
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.partition import (
    DevicePart,
    StudentSegment,
    build_device_student,
    device_param_names,
)
from splitkd_flwr.split.placement import resolve_device
from splitkd_flwr.split.precision import (
    autocast_dtype,
    enable_gradient_checkpointing,
    student_base_dtype,
)
from splitkd_flwr.split.ushape import DeviceModules, ushape_head
from splitkd_flwr.split_kd import assets, protocol
from splitkd_flwr.split_kd.arrays import from_record, to_record
from splitkd_flwr.split_kd.dataplane import run_device_round
from splitkd_flwr.split_kd.private_layers import (
    load_private,
    private_path,
    save_private,
)
from splitkd_flwr.split_kd.ushape_plane import run_device_round_ushape
from splitkd_flwr.transport.stream import DeviceSession, DeviceTLS


def profile(msg: Message, context: Context) -> Message:
    """Say who this device is and which assets it already holds."""
    node = NodeConfig.from_node_config(context.node_config, context.run_config)
    record = ConfigRecord(
        {
            "partition-id": node.partition_id,
            "device": node.device,
            "assets-key": assets.stored_key(node.cache_dir),
        }
    )
    if node.energy_budget_j is not None:
        record["energy-budget-j"] = node.energy_budget_j
    return Message(RecordDict({protocol.PROFILE: record}), reply_to=msg)


def provision(msg: Message, context: Context) -> Message:
    """Store the student config, tokenizer and teacher embedding the server sent."""
    node = NodeConfig.from_node_config(context.node_config, context.run_config)
    key = assets.store(
        node.cache_dir,
        msg.content[protocol.ASSETS],
        msg.content[protocol.TEACHER_EMBEDDING],
    )
    return Message(
        RecordDict({protocol.PROFILE: ConfigRecord({"assets-key": key})}), reply_to=msg
    )


def train(msg: Message, context: Context) -> Message:
    """Run the device side of one split round over the data plane; return its layers."""
    started = time.perf_counter()
    node = NodeConfig.from_node_config(context.node_config, context.run_config)
    plan = protocol.RoundPlan.from_record(msg.content[protocol.PLAN])
    torch.manual_seed(plan.seed)
    received = from_record(msg.content[protocol.DEVICE_WEIGHTS])
    if plan.device_private_layers:
        initial = (
            from_record(msg.content[protocol.PRIVATE_INIT])
            if protocol.PRIVATE_INIT in msg.content
            else None
        )
        private = load_private(
            node.cache_dir, context.run_id, initial, plan.private_init_noise
        )
        received = {**received, **private}
    device_part, head = _device_part(node, plan, received)
    trained = (
        device_part.student
        if head is None
        else DeviceModules(device_part.student, head)
    )
    optimizer = torch.optim.AdamW(
        [p for p in trained.parameters() if p.requires_grad], lr=plan.device_lr
    )
    batches = device_batches(node, load_device_tokenizer(node), plan)
    # Devices never change their clock here; the planner decides only the server's.
    with HardwareMonitor.from_config(node.energy_meter, "none") as monitor:
        tls = DeviceTLS(plan.tls_root_cert.encode()) if plan.tls_root_cert else None
        with DeviceSession(
            plan.address,
            plan.token,
            timeout_s=plan.frame_timeout_s,
            wire_dtype=plan.wire_dtype,
            tls=tls,
        ) as session:
            # The meter sees the whole round (compute and waits for the server): a sampler
            # cannot be started per mini-batch without costing more than it measures.
            with monitor.measure("device-round"):
                if head is None:
                    figures = run_device_round(
                        session,
                        device_part,
                        batches,
                        optimizer,
                        autocast_dtype(plan.train_precision),
                        noise_epsilon=plan.smashed_noise,
                    )
                else:
                    figures = run_device_round_ushape(
                        session,
                        device_part,
                        head,
                        batches,
                        optimizer,
                        plan_loss(plan),
                        plan.smashed_noise,
                    )
        energy = monitor.metrics()
    # With LoRA only the adapters changed, and only they go back.
    if head is None:
        updated = device_part.student.student_state_dict(trainable_only=True)
    else:
        updated = trained.student_state_dict()
    if plan.device_private_layers:
        # Kept here for the next round and deployment; never uploaded.
        save_private(
            node.cache_dir, context.run_id, {k: updated.pop(k) for k in list(private)}
        )
    metrics = MetricRecord(
        {**figures, **energy, "measured-device-round-s": time.perf_counter() - started}
    )
    content = RecordDict(
        {protocol.DEVICE_WEIGHTS: to_record(updated), protocol.METRICS: metrics}
    )
    return Message(content, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Keep the distilled student (deployment) and report how it does on local data."""
    node = NodeConfig.from_node_config(context.node_config, context.run_config)
    student = _load_student(node)
    student.load_state_dict(from_record(msg.content[protocol.STUDENT]))
    own = private_path(node.cache_dir, context.run_id)
    if own.exists():
        # The server's copy of the private layers is the initial one; use the trained.
        loaded = student.load_state_dict(load_file(str(own)), strict=False)
        if loaded.unexpected_keys:
            raise ModelError(
                f"{own} holds unknown tensors {loaded.unexpected_keys[:3]}"
            )
    student.save_pretrained(node.cache_dir / "deployed-student")
    # Evaluation runs where the device's model runs.
    student.to(resolve_device(node.torch_device, "torch-device"))
    tokenizer = load_device_tokenizer(node)
    eval_config = msg.content[protocol.EVAL_CONFIG]
    batches = device_eval_batches(
        node, tokenizer, int(eval_config["seq-len"]), int(eval_config["batch-size"])
    )
    metrics = {k: float(v) for k, v in evaluate_lm(student, batches).items()}
    return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)


def _device_part(
    node: NodeConfig, plan: protocol.RoundPlan, received: dict[str, torch.Tensor]
) -> tuple[DevicePart, StudentSegment | None]:
    """The device side of the round's student on ``torch-device``, holding the server's
    weights (for LoRA: the provisioned frozen base, then the received adapters), and the
    u-shape's head segment (None in the seed mode)."""
    device = resolve_device(node.torch_device, "torch-device")
    lora = LoraSpec.from_keys(
        plan.lora_rank, plan.lora_alpha, plan.lora_dropout, plan.lora_targets
    )
    # Only the embeddings and blocks below the cut take memory; the rest stays on "meta".
    student = build_device_student(
        _student_config(node),
        plan.cut_layer,
        dtype=student_base_dtype(lora is not None, plan.train_precision),
        device=device,
        head=plan.split_mode == "u-shape",
    )
    table = assets.load_teacher_embedding(node.cache_dir).to(device)
    device_part = DevicePart.from_parts(table, student, plan.cut_layer)
    head = ushape_head(student) if plan.split_mode == "u-shape" else None
    if head is not None and lora is not None:
        raise ModelError("split-mode u-shape does not support LoRA yet")
    # The one check of the received names, shapes and values is in load_student_state_dict.
    if head is not None:
        DeviceModules(device_part.student, head).load_student_state_dict(received)
    elif lora is None:
        device_part.student.load_student_state_dict(received)
    else:
        names = device_param_names(student, plan.cut_layer)
        base = assets.load_student_base(node.cache_dir, names)
        device_part.student.load_student_state_dict(base)
        add_lora(student, lora)
        device_part.student.load_student_state_dict(received, trainable_only=True)
    if plan.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    return device_part, head


def plan_loss(plan: protocol.RoundPlan) -> KDLoss:
    """The run's KD loss, which a u-shape device computes itself."""
    return KDLoss(
        alpha=plan.kd_alpha,
        temperature=plan.kd_temperature,
        divergence=plan.kd_divergence,
        beta=plan.kd_beta,
    )


def _student_config(node: NodeConfig) -> PretrainedConfig:
    if not assets.stored_key(node.cache_dir):
        raise ModelError(
            f"device {node.partition_id} has no provisioned assets in {node.cache_dir}"
        )
    config = assets.load_student_config(node.cache_dir)
    # Split training keeps the input embedding and the head apart.
    config.tie_word_embeddings = False
    return config


def _load_student(node: NodeConfig) -> PreTrainedModel:
    return AutoModelForCausalLM.from_config(_student_config(node))

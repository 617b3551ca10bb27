"""With LoRA a round's Flower messages carry the adapters below the cut and nothing more."""

import pytest
import torch

from splitkd_flwr.core.types import Workload
from splitkd_flwr.default_models.configs import (
    default_student_config,
    default_teacher_config,
)
from splitkd_flwr.simulation.memory import MemoryModel
from splitkd_flwr.split.lora import LoraSpec, adapter_names
from splitkd_flwr.split.loss import KDLoss
from splitkd_flwr.split.models import load_causal_lm
from splitkd_flwr.split.server import SplitServer
from splitkd_flwr.split_kd.arrays import from_record, state_bytes, to_record

VOCAB = 1024  # the default tokenizer's vocabulary (default_models.prepare)
CUT = 4


def _server(lora: LoraSpec | None) -> SplitServer:
    torch.manual_seed(0)
    teacher = load_causal_lm(default_teacher_config(VOCAB))
    student = load_causal_lm(default_student_config(VOCAB))
    return SplitServer(teacher, student, KDLoss(), 1e-3, lora=lora)


def test_default_student_rank_8_sends_about_15_percent_of_full_weights() -> None:
    # Prepare
    full, lora = _server(None), _server(LoraSpec(rank=8))

    # Execute
    full_bytes = state_bytes(full.device_state(CUT))
    lora_state = lora.device_state(CUT)
    lora_bytes = state_bytes(lora_state)

    # Assert: adapters only, ~15 %, and exactly what the memory model predicts
    assert set(adapter_names(lora_state)) == set(lora_state)
    assert lora_bytes / full_bytes == pytest.approx(0.15, abs=0.01)
    config = default_student_config(VOCAB).to_dict()
    predicted = {
        rank: MemoryModel(
            Workload(16, 8, 64, 1, student_config=config, lora_rank=rank)
        ).weights_bytes_per_round()[CUT - 1]
        for rank in (0, 8)
    }
    assert lora_bytes == predicted[8]
    assert full_bytes == predicted[0]


def test_bf16_tensors_cross_an_array_record_bit_exactly() -> None:
    # Prepare
    state = {"w": torch.randn(3, 5).to(torch.bfloat16), "i": torch.arange(4)}

    # Execute
    back = from_record(to_record(state))

    # Assert
    assert back.keys() == state.keys()
    assert back["w"].dtype == torch.bfloat16 and torch.equal(back["w"], state["w"])
    assert torch.equal(back["i"], state["i"])


def test_provisioning_keeps_the_teachers_dtype_and_the_lora_base(tmp_path) -> None:
    # Prepare: a LoRA server with a bf16 teacher; what it provisions
    from splitkd_flwr.data.corpus import generate_corpus
    from splitkd_flwr.data.tokenizer import train_tokenizer
    from splitkd_flwr.split_kd import assets

    tokenizer = train_tokenizer((d.text for d in generate_corpus(50, seed=1)), 300)
    server = _server(LoraSpec(rank=8))
    table = server.teacher.get_input_embeddings().weight
    config_json = server.student.config.to_json_string()
    base = server.device_base_state()
    packed = {
        dtype: assets.DeviceAssets.pack(config_json, tokenizer, table.to(dtype), base)
        for dtype in (torch.float32, torch.bfloat16)
    }

    # Execute
    key = assets.store(
        tmp_path,
        packed[torch.bfloat16].config,
        packed[torch.bfloat16].teacher_embedding,
    )
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"]
    loaded = assets.load_student_base(tmp_path, names)

    # Assert: bf16 table at half the bytes, bit-exact; the base under plain names
    sizes = {
        d: p.sizes_bytes["provision-teacher-embedding-bytes"] for d, p in packed.items()
    }
    assert sizes[torch.bfloat16] * 2 == sizes[torch.float32]
    assert key == packed[torch.bfloat16].key != packed[torch.float32].key
    stored = assets.load_teacher_embedding(tmp_path)
    assert stored.dtype == torch.bfloat16 and torch.equal(
        stored, table.to(torch.bfloat16)
    )
    assert not any(".lora_" in n or ".base_layer." in n for n in base)
    assert (
        "lm_head.weight" not in base
        and "model.layers.15.mlp.up_proj.weight" not in base
    )
    for name in names:
        assert torch.equal(loaded[name], base[name])


def test_a_lora_server_checkpoint_restores_into_a_fresh_lora_server(tmp_path) -> None:
    # Prepare: a LoRA server after one committed round, checkpointed
    from splitkd_flwr.flower.checkpoint import Checkpoint, CheckpointStore
    from splitkd_flwr.split.server import load_server_state, server_state

    server = _server(LoraSpec(rank=8))
    with torch.no_grad():
        for name, p in server.student.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)
    store = CheckpointStore(tmp_path)
    store.save(Checkpoint(1, {"server": server_state(server)}, [], {}))

    # Execute
    fresh = _server(LoraSpec(rank=8))
    load_server_state(fresh, store.latest().state["server"])

    # Assert
    for name, value in server.student.state_dict().items():
        assert torch.equal(fresh.student.state_dict()[name], value), name

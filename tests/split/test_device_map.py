"""`teacher-device-map = auto`: accelerate places the teacher (here: all on the CPU)."""

import torch

from splitkd_flwr.split.models import load_causal_lm
from tests.apps.tiny import tiny_llama


def test_device_map_auto_loads_the_same_teacher_through_accelerate(tmp_path) -> None:
    # Prepare
    tiny_llama(61, hidden=32, layers=2).save_pretrained(tmp_path / "teacher")
    ids = torch.randint(3, 61, (2, 7))

    # Execute
    plain = load_causal_lm(tmp_path / "teacher")
    mapped = load_causal_lm(tmp_path / "teacher", device_map="auto")

    # Assert: on this CPU-only machine accelerate's map is the CPU alone (sharding over
    # GPUs needs GPUs), and the mapped teacher computes what the plain one does
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert {p.device.type for p in mapped.parameters()} == {expected}
    mapped, plain = mapped.cpu(), plain.cpu()
    with torch.no_grad():
        torch.testing.assert_close(mapped(ids).logits, plain(ids).logits)

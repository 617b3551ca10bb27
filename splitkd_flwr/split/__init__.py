"""Split knowledge distillation in plain PyTorch + Transformers (no Flower)."""

"""splitkd-flwr: split knowledge distillation of language models on Flower."""

__version__ = "0.1.0"

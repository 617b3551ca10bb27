"""A frame of the data plane: named tensors plus scalar metadata, and its expected shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from splitkd_flwr.core.errors import TransportError

__all__ = ["Frame", "Scalar", "TensorSpec", "check_spec"]

Scalar = int | float | str | bool | None


@dataclass
class Frame:
    """A small named set of tensors plus JSON-able scalars (e.g. ``{"loss": 2.3}``)."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Scalar] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


@dataclass(frozen=True)
class TensorSpec:
    """What one tensor of an expected frame must look like.

    Parameters
    ----------
    dtype : torch.dtype | None
        Required dtype after decoding; ``None`` accepts any.
    shape : tuple[int | str | None, ...]
        One entry per dimension: an ``int`` is an exact size, a ``str`` a symbol that
        must take the same size everywhere in the frame (``"B"``, ``"T"``), ``None`` any.
    """

    dtype: torch.dtype | None
    shape: tuple[int | str | None, ...]


def check_spec(frame: Frame, spec: Mapping[str, TensorSpec]) -> None:
    """Raise ``TransportError`` unless ``frame`` matches ``spec``.

    Parameters
    ----------
    frame : Frame
        A decoded frame.
    spec : Mapping[str, TensorSpec]
        Exactly the tensor names the frame must hold, with their dtypes and shapes.
    """
    if set(frame.tensors) != set(spec):
        raise TransportError(
            f"frame holds tensors {sorted(frame.tensors)}, expected {sorted(spec)}"
        )
    sizes: dict[str, int] = {}
    for name, want in spec.items():
        t = frame.tensors[name]
        if want.dtype is not None and t.dtype != want.dtype:
            raise TransportError(
                f"tensor {name!r} has dtype {t.dtype}, expected {want.dtype}"
            )
        if t.dim() != len(want.shape):
            raise TransportError(
                f"tensor {name!r} has shape {tuple(t.shape)}, expected {want.shape}"
            )
        for size, dim in zip(t.shape, want.shape, strict=True):
            if isinstance(dim, str):
                dim = sizes.setdefault(dim, size)
            if dim is not None and size != dim:
                raise TransportError(
                    f"tensor {name!r} has shape {tuple(t.shape)}, expected "
                    f"{want.shape} with {sizes}"
                )

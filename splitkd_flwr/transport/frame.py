"""A frame of the data plane: named tensors plus scalar metadata, and its expected shape."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from splitkd_flwr.core.errors import TransportError

__all__ = ["Dim", "Frame", "Scalar", "TensorSpec", "check_layout", "check_spec"]

Scalar = int | float | str | bool | None


@dataclass
class Frame:
    """A small named set of tensors plus JSON-able scalars (e.g. ``{"loss": 2.3}``)."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Scalar] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


@dataclass(frozen=True)
class Dim:
    """A named dimension shared across a frame, at most ``max`` long.

    ``what`` names the setting that bounds it (e.g. ``"batch-size"``), for the message.
    """

    name: str
    max: int
    what: str = ""


@dataclass(frozen=True)
class TensorSpec:
    """What one tensor of an expected frame must look like.

    Parameters
    ----------
    dtype : torch.dtype | tuple[torch.dtype, ...] | None
        Required dtype (or one of several) after decoding; ``None`` accepts any.
    shape : tuple[int | str | Dim | None, ...]
        One entry per dimension: an ``int`` is an exact size, a ``str`` a symbol that
        must take the same size everywhere in the frame (``"B"``, ``"T"``), a `Dim` such
        a symbol with an upper bound, ``None`` any.
    values : Callable[[torch.Tensor], str | None] | None
        Checks the values (e.g. a mask in {0, 1}); returns what is wrong, or ``None``.
    """

    dtype: torch.dtype | tuple[torch.dtype, ...] | None
    shape: tuple[int | str | Dim | None, ...]
    values: Callable[[torch.Tensor], str | None] | None = None


def check_spec(frame: Frame, spec: Mapping[str, TensorSpec]) -> None:
    """Raise ``TransportError`` unless ``frame`` matches ``spec``: `check_layout`, then values.

    Parameters
    ----------
    frame : Frame
        A decoded frame.
    spec : Mapping[str, TensorSpec]
        Exactly the tensor names the frame must hold, with their dtypes and shapes.
    """
    check_layout(frame.tensors, spec)
    for name, want in spec.items():
        problem = want.values(frame.tensors[name]) if want.values else None
        if problem is not None:
            raise TransportError(f"tensor {name!r}: {problem}")


def check_layout(
    tensors: Mapping[str, torch.Tensor], spec: Mapping[str, TensorSpec]
) -> None:
    """Raise ``TransportError`` unless the names, dtypes and shapes match ``spec``.

    Reads only metadata: the codec runs it on ``meta`` tensors built from a frame's
    header, so a mistyped or oversized tensor is refused before its bytes are read.
    """
    if set(tensors) != set(spec):
        raise TransportError(
            f"frame holds tensors {sorted(tensors)}, expected {sorted(spec)}"
        )
    sizes: dict[str, int] = {}
    for name, want in spec.items():
        t = tensors[name]
        allowed = (want.dtype,) if isinstance(want.dtype, torch.dtype) else want.dtype
        if allowed is not None and t.dtype not in allowed:
            expected = " or ".join(str(d) for d in allowed)
            raise TransportError(
                f"tensor {name!r} has dtype {t.dtype}, expected {expected}"
            )
        if t.dim() != len(want.shape):
            raise TransportError(
                f"tensor {name!r} has shape {tuple(t.shape)}, expected {want.shape}"
            )
        for size, dim in zip(t.shape, want.shape, strict=True):
            if isinstance(dim, Dim):
                if size > dim.max:
                    bound = f" ({dim.what})" if dim.what else ""
                    raise TransportError(
                        f"tensor {name!r} has {dim.name}={size}, the round allows "
                        f"at most {dim.max}{bound}"
                    )
                dim = dim.name
            if isinstance(dim, str):
                dim = sizes.setdefault(dim, size)
            if dim is not None and size != dim:
                raise TransportError(
                    f"tensor {name!r} has shape {tuple(t.shape)}, expected "
                    f"{want.shape} with {sizes}"
                )

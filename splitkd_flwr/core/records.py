"""One codec between frozen dataclasses and hyphenated-key mappings.

Run configs (``context.run_config``) and round plans (a Flower ConfigRecord) are both
flat mappings whose keys are the dataclass's field names with ``-`` for ``_``. Decoding
checks every value's type and names the key that is wrong.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

from splitkd_flwr.core.errors import ConfigError

T = TypeVar("T")

_KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def hyphenated(name: str) -> str:
    """``num_rounds`` -> ``num-rounds``."""
    return name.replace("_", "-")


def to_hyphenated(obj: Any) -> dict[str, Any]:
    """A dataclass instance as a ``{hyphenated-field: value}`` dict, in field order."""
    return {hyphenated(f.name): getattr(obj, f.name) for f in dataclasses.fields(obj)}


def coerce(key: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind``; an int where a float is meant is widened, nothing else is."""
    # TOML and `--run-config` give int for `1` where a float is meant; never silently
    # accept a string for a number, a bool for an int or a float for an int.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    raise ConfigError(
        f"{key} must be a {kind.__name__}, got {value!r} ({type(value).__name__})"
    )


def field_kind(field: dataclasses.Field[Any]) -> type:
    """The plain type of a dataclass field (``int``, ``float``, ``str`` or ``bool``)."""
    kind = field.type if isinstance(field.type, type) else _KINDS.get(str(field.type))
    if kind is None:
        kind = type(field.default)
    return kind


def from_hyphenated(
    cls: type[T],
    mapping: Mapping[str, Any],
    *,
    partial: bool = False,
    what: str | None = None,
) -> T:
    """Build ``cls`` from a hyphenated mapping.

    Parameters
    ----------
    cls : type
        A dataclass whose fields are ints, floats, strings or bools.
    mapping : Mapping[str, Any]
        Hyphenated keys; a key ``cls`` lacks is a ConfigError listing the known ones.
    partial : bool
        If True, keys missing from ``mapping`` keep their defaults (a run config);
        if False, every field must be present (a round plan).
    what : str, optional
        How errors name the mapping (default: the class name).
    """
    what = what or cls.__name__
    fields = {hyphenated(f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], fields, n=1)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else "known keys: " + ", ".join(fields)
        )
        raise ConfigError(f"unknown {what} key {unknown[0]!r}; {hint}")
    values: dict[str, Any] = {}
    for key, field in fields.items():
        if key not in mapping:
            if partial:
                continue
            raise ConfigError(f"{what} lacks {key!r}")
        values[field.name] = coerce(key, mapping[key], field_kind(field))
    return cls(**values)

"""Pluggable parts (selectors, planners) loaded by registered name or dotted path."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, TypeVar

from splitkd_flwr.core.errors import ConfigError

T = TypeVar("T")


def load_component(
    spec: str, base: type[T], registry: Mapping[str, type[T]], *args: Any, **kwargs: Any
) -> T:
    """Build the component that ``spec`` names.

    Parameters
    ----------
    spec : str
        A registered name (``"round-robin"``) or a dotted path ``"package.module:Class"``
        (``"package.module.Class"`` is accepted too).
    base : type
        The interface the component must implement.
    registry : Mapping[str, type]
        Built-in components by name.
    *args, **kwargs
        Passed to the component's constructor.
    """
    if spec in registry:
        cls: Any = registry[spec]
    else:
        module_name, sep, attr = spec.partition(":")
        if not sep:
            module_name, _, attr = spec.rpartition(".")
        if not module_name or not attr:
            raise ConfigError(
                f"unknown {base.__name__} {spec!r}: use one of {sorted(registry)} "
                "or a dotted path 'package.module:Class'"
            )
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"cannot load {base.__name__} {spec!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(
            f"{spec!r} is not a subclass of {base.__module__}.{base.__name__}"
        )
    return cls(*args, **kwargs)

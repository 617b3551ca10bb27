"""Pluggable parts (selectors, planners) loaded by registered name or dotted path."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from splitkd_flwr.core.errors import ConfigError

T = TypeVar("T")


def component_class(
    spec: str, base: type[T], registry: Mapping[str, type[T]]
) -> type[T]:
    """The class that ``spec`` names, imported but not built (a run checks it before starting).

    Parameters
    ----------
    spec : str
        A registered name (``"round-robin"``) or a dotted path ``"package.module:Class"``
        (``"package.module.Class"`` is accepted too).
    base : type
        The interface the component must implement.
    registry : Mapping[str, type]
        Built-in components by name.
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
            raise ConfigError(
                f"cannot load {base.__name__} {spec!r}: {err} (is its package "
                "installed, or on PYTHONPATH, where the SuperLink runs?)"
            ) from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(
            f"{spec!r} is not a subclass of {base.__module__}.{base.__name__}"
        )
    return cls


def accepted_options(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``options`` that ``cls``'s constructor names (all of them if it takes ``**kwargs``).

    Built-in components take extras beyond their interface (a planner's ``fleet``); a
    plug-in written against the interface alone must not receive them.
    """
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(options)
    names = {
        p.name
        for p in parameters
        if p.kind
        in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    return {key: value for key, value in options.items() if key in names}


def load_component(
    spec: str,
    base: type[T],
    registry: Mapping[str, type[T]],
    *args: Any,
    optional: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> T:
    """Build the component that ``spec`` names (see :func:`component_class`).

    ``args`` and ``kwargs`` are the interface's constructor arguments and always passed;
    ``optional`` keyword arguments are passed only to constructors that accept them.
    """
    cls = component_class(spec, base, registry)
    extra = accepted_options(cls, optional or {})
    return cls(*args, **kwargs, **extra)

"""The project's exception hierarchy: every error a user can cause names its cause."""


class SplitKDError(Exception):
    """Base class of every error raised by splitkd-flwr."""


class ConfigError(SplitKDError, ValueError):
    """A run-config or node-config value is missing, malformed or out of range."""


class ModelError(SplitKDError):
    """A model cannot be loaded, paired or partitioned (path, architecture, vocabulary)."""


class CutLayerError(ModelError, ValueError):
    """A cut layer outside ``1 <= cut_layer <= num_layers - 1``."""


class TransportError(SplitKDError):
    """The data plane failed: bad token, malformed frame, timeout, vanished peer."""


class RoundFailedError(SplitKDError):
    """A training round could not complete; the global student was rolled back."""

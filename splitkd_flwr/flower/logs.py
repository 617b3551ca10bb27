"""Route the library packages' standard-library log records to Flower's console handler.

The library packages (``split``, ``transport``, ``simulation``, ``hardware``, ``data``) log
with :mod:`logging` and know nothing of Flower; inside a ServerApp or ClientApp their
records should appear where Flower's own do, in the same format.
"""

from __future__ import annotations

import logging

from flwr.common.logger import console_handler

PACKAGE_LOGGER = "splitkd_flwr"


def route_to_flower(level: int = logging.INFO) -> None:
    """Send ``splitkd_flwr.*`` records at ``level`` and above to Flower's console handler."""
    package = logging.getLogger(PACKAGE_LOGGER)
    package.setLevel(level)
    if console_handler not in package.handlers:
        package.addHandler(console_handler)
    # Flower's handler is attached to the "flwr" logger, not the root: without this the
    # records would also reach the root logger's handlers (printed twice under pytest).
    package.propagate = False

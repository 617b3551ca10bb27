"""The edge server's Flower ServerApp: read the run config, run its mode."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.logs import route_to_flower

# Both modes are imported here, at load time: importing transformers inside main() raced
# with the simulation engine loading the ClientApp in another thread (a half-initialised
# `transformers` module: "cannot import name 'PreTrainedTokenizerBase'").
from splitkd_flwr.koala.run import run_koala
from splitkd_flwr.split_kd.run import run_split_kd

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run split KD (or KOALA) for ``num-rounds`` rounds and save the result."""
    route_to_flower()
    config = RunConfig.from_run_config(context.run_config)
    _exit_cleanly_on_sigterm()
    logger.info("splitkd-flwr run config: %s", config.to_run_config())
    if config.mode == "koala":
        run_koala(grid, config)
    else:
        run_split_kd(grid, config)


def _exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (how Flower stops a run) into SystemExit, so ``finally`` restores the GPU clock."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

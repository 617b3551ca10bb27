"""The edge server's Flower ServerApp: read the run config, run its mode."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from splitkd_flwr.core.errors import SplitKDError
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.environment import apply_threads, quiet_libraries
from splitkd_flwr.flower.logs import route_to_flower
from splitkd_flwr.flower.preflight import check_run

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
    quiet_libraries()
    try:
        config = RunConfig.from_run_config(context.run_config)
        apply_threads(config.threads)
        # Files, models, vocabulary, cut and plug-ins, before any model is loaded or
        # prepared: a bad run stops here, in seconds, with one line naming the key.
        check_run(config)
    except SplitKDError as err:
        # Flower logs the traceback below this line and marks the run failed (`flwr ls`);
        # `flwr run --stream` itself still exits 0, so the reason must be readable here.
        logger.error("splitkd-flwr: the run config is rejected: %s", err)
        raise
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

"""The device's Flower ClientApp: split KD's handlers and KOALA's, registered by message type."""

import functools
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from splitkd_flwr.flower.environment import apply_run_threads, quiet_libraries
from splitkd_flwr.flower.logs import route_to_flower
from splitkd_flwr.koala.client import koala_train
from splitkd_flwr.split_kd import client as split_kd

route_to_flower()

Handler = Callable[[Message, Context], Message]


def _in_run_environment(handler: Handler) -> Handler:
    """Before each message: this process's threads from the run config (environment.py),
    no progress bars, library logs routed to Flower's handler.

    Per message, not at import: Ray ships the loaded ClientApp to its actors by value, so
    this module's top-level code never runs in the processes that handle the messages.
    """

    @functools.wraps(handler)
    def handle(msg: Message, context: Context) -> Message:
        apply_run_threads(context.run_config)
        quiet_libraries()
        route_to_flower()
        return handler(msg, context)

    return handle


app = ClientApp()
app.query("profile")(_in_run_environment(split_kd.profile))
app.query("provision")(_in_run_environment(split_kd.provision))
app.train()(_in_run_environment(split_kd.train))
app.evaluate()(_in_run_environment(split_kd.evaluate))
app.train("koala")(_in_run_environment(koala_train))

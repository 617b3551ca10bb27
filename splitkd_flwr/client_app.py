"""The device's Flower ClientApp: split KD's handlers and KOALA's, registered by message type."""

import functools
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from splitkd_flwr.flower.environment import apply_run_threads
from splitkd_flwr.flower.logs import route_to_flower
from splitkd_flwr.koala.client import koala_train
from splitkd_flwr.split_kd import client as split_kd

route_to_flower()

Handler = Callable[[Message, Context], Message]


def _with_run_threads(handler: Handler) -> Handler:
    """Set this process's threads from the run config before each message (see environment.py)."""

    @functools.wraps(handler)
    def handle(msg: Message, context: Context) -> Message:
        apply_run_threads(context.run_config)
        return handler(msg, context)

    return handle


app = ClientApp()
app.query("profile")(_with_run_threads(split_kd.profile))
app.query("provision")(_with_run_threads(split_kd.provision))
app.train()(_with_run_threads(split_kd.train))
app.evaluate()(_with_run_threads(split_kd.evaluate))
app.train("koala")(_with_run_threads(koala_train))

"""The project's ClientApp, except that vehicle 1 dies after two mini-batches of round 1.

A fixture of tests/apps/test_cluster_simulation.py, copied beside the package into a
temporary app directory; the real device handlers do everything else. The death is an
exception inside the data-plane session, so the device aborts its stream mid-round and
its ClientApp then fails (the server sees both).
"""

from itertools import islice

from flwr.clientapp import ClientApp

from splitkd_flwr.flower.logs import route_to_flower
from splitkd_flwr.flower.node_config import NodeConfig
from splitkd_flwr.split_kd import client as split_kd
from splitkd_flwr.split_kd import protocol

route_to_flower()
_real_round = split_kd.run_device_round


class VehicleDied(RuntimeError):
    """The vehicle stopped mid-round."""


def _two_batches_then_die(session, device_part, batches, optimizer, *args, **kwargs):
    _real_round(session, device_part, islice(batches, 2), optimizer, *args, **kwargs)
    raise VehicleDied("vehicle 1 died after two mini-batches")


def train(msg, context):
    """The real train handler; vehicle 1 in round 1 dies mid-stream."""
    plan = protocol.RoundPlan.from_record(msg.content[protocol.PLAN])
    node = NodeConfig.from_node_config(context.node_config)
    if node.partition_id != 1 or plan.server_round != 1:
        return split_kd.train(msg, context)
    # one ClientApp at a time per actor process: patching the module for this call is safe
    split_kd.run_device_round = _two_batches_then_die
    try:
        return split_kd.train(msg, context)
    finally:
        split_kd.run_device_round = _real_round


app = ClientApp()
app.query("profile")(split_kd.profile)
app.query("provision")(split_kd.provision)
app.train()(train)
app.evaluate()(split_kd.evaluate)

"""The device's Flower ClientApp: split KD's handlers and KOALA's, registered by message type."""

from flwr.clientapp import ClientApp

from splitkd_flwr.flower.logs import route_to_flower
from splitkd_flwr.koala.client import koala_train
from splitkd_flwr.split_kd import client as split_kd

route_to_flower()

app = ClientApp()
app.query("profile")(split_kd.profile)
app.query("provision")(split_kd.provision)
app.train()(split_kd.train)
app.evaluate()(split_kd.evaluate)
app.train("koala")(koala_train)

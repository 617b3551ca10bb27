"""The documented deployment TLS: a CA-signed data-plane certificate, its chain sent in the plan."""

import datetime
import ipaddress

import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from splitkd_flwr.transport.stream import (
    DataPlaneServer,
    DeviceSession,
    DeviceTLS,
    Frame,
    ServerTLS,
    new_token,
)


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        alt = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(
            x509.SubjectAlternativeName([alt]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def test_ca_signed_certificate_with_its_chain_as_the_devices_root() -> None:
    # Prepare: a CA, and a server certificate it signed (not self-signed).
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _cert("splitkd-ca", ca_key, "splitkd-ca", ca_key, ca=True)
    leaf = _cert("127.0.0.1", server_key, "splitkd-ca", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem) + ca.public_bytes(
        pem
    )  # what data-plane-certfile holds
    key_pem = server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    server = DataPlaneServer("127.0.0.1", 0, tls=ServerTLS(chain, key_pem))
    address = server.start()
    token = new_token()
    handle = server.open_round(token, lambda f: Frame({"grad": f["x"] * 2}))

    # Execute: the device trusts exactly the chain the round plan carried.
    try:
        with DeviceSession(
            address, token, timeout_s=10, tls=DeviceTLS(chain)
        ) as session:
            answer = session.exchange(Frame({"x": torch.ones(3)}))
        handle.wait(10)
    finally:
        server.stop()

    # Assert
    assert torch.equal(answer["grad"], torch.full((3,), 2.0))
    assert handle.error is None

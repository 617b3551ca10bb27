"""TLS material for the data plane: the same PEM files a Flower SuperLink uses."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DeviceTLS", "ServerTLS", "self_signed"]


@dataclass(frozen=True)
class ServerTLS:
    """The server's certificate chain and private key (PEM bytes)."""

    certificate_chain: bytes
    private_key: bytes

    @classmethod
    def from_files(cls, certfile: str | Path, keyfile: str | Path) -> ServerTLS:
        """Read PEM files, e.g. the SuperLink's ``--ssl-certfile`` and ``--ssl-keyfile``."""
        return cls(Path(certfile).read_bytes(), Path(keyfile).read_bytes())

    def context(self) -> ssl.SSLContext:
        """A server context: TLS 1.2 or later, this certificate chain and key."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads a chain only from files: a private folder, removed at once.
        with tempfile.TemporaryDirectory(prefix="splitkd-tls-") as folder:
            cert, key = Path(folder, "chain.pem"), Path(folder, "key.pem")
            cert.write_bytes(self.certificate_chain)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(self.private_key)
            ctx.load_cert_chain(cert, key)
        return ctx


@dataclass(frozen=True)
class DeviceTLS:
    """The root certificate(s) a device trusts (PEM), and the name to check if not the host."""

    root_certificates: bytes
    server_name: str | None = None

    @classmethod
    def from_file(
        cls, root_certfile: str | Path, server_name: str | None = None
    ) -> DeviceTLS:
        """Read a PEM file, e.g. the one a SuperNode gets as ``--root-certificates``."""
        return cls(Path(root_certfile).read_bytes(), server_name)

    def context(self) -> ssl.SSLContext:
        """A client context: TLS 1.2 or later, trusting exactly these roots.

        The certificate and its name are checked (``check_hostname``) against
        ``server_name`` if set, else against the host the device dials.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and name
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cadata=self.root_certificates.decode("ascii"))
        return ctx


def self_signed(host: str = "127.0.0.1", days: int = 1) -> tuple[ServerTLS, DeviceTLS]:
    """A throw-away self-signed certificate for ``host`` (tests, local trials).

    Parameters
    ----------
    host : str
        IP address or DNS name put in the certificate's subject alternative name.
    days : int
        Validity.

    Returns
    -------
    tuple[ServerTLS, DeviceTLS]
        The server's material and the device's, trusting exactly this certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ServerTLS(cert_pem, key_pem), DeviceTLS(cert_pem)

"""The run's own certificate authority and the bus's server certificates.

A bus that listens beyond loopback serves TLS with a certificate issued by a CA made for
the run, and every credentials file carries that CA's certificate: a client trusts exactly
this run's bus, and nothing else is needed on its host. The CA's key stays with the bus
(``<run_dir>/credentials/ca-key.pem``, mode 0600); a node joining a cluster gets it with
the copied credentials directory and issues its own server certificate from it.

The functions below are pure (keys, names and times in; PEM out) apart from key generation.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: A run's CA outlives any run; server certificates are re-issued at every bus start.
CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 825
#: Tolerance for clocks of other hosts that run slightly behind the bus's.
CLOCK_SKEW = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: str
    key_pem: str


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def generate_ca(run_id: str, now: datetime.datetime) -> KeyPair:
    """A self-signed CA named after the run, allowed to sign server certificates only."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tracerl run {run_id} CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    """Each host as an IP address entry if it parses as one, else as a DNS name; duplicates once."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip() for h in hosts if h.strip()):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_server_cert(ca: KeyPair, hosts: list[str], now: datetime.datetime) -> KeyPair:
    """A certificate for the bus's addresses ``hosts``, signed by ``ca``.

    It serves clients and also authenticates cluster routes, where each node is both the
    server one peer dials and the client dialling another: hence both key usages.
    """
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=SERVER_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(subject_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def certificate_hosts(listen_host: str, route_host: str, extra: list[str], local_names: list[str]) -> list[str]:
    """The names a node's certificate must hold: every address a client or peer may dial.

    ``local_names`` are this machine's own (its hostname); loopback is always included so
    the bus's own admin client and local tools connect. A wildcard listen address is kept
    as a name too: clients told to use it (``nats://0.0.0.0``) reach this host.
    """
    hosts = [listen_host, route_host, *extra, "127.0.0.1", "localhost", *local_names]
    return [h for h in dict.fromkeys(hosts) if h and h != "::"]


def client_context(ca_pem: str) -> ssl.SSLContext:
    """Verify the server's certificate against the run's CA only, and its name against the URL's host."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context

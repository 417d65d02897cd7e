"""A throw-away fleet PKI for the TLS tests: a CA, a broker certificate for 127.0.0.1, device certificates."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


class FleetPki:
    """Writes ca.pem, broker.pem/broker.key and, on demand, <name>.pem/<name>.key into ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.ca = (x509.CertificateBuilder().subject_name(_name("fleet test CA")).issuer_name(_name("fleet test CA"))
                   .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(self.ca_key, hashes.SHA256()))
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))
        self.broker_cert, self.broker_key = self.issue("broker", server=True)

    def issue(self, cn: str, *, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{cn}.pem", self.dir / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        return cert_path, key_path

    def sign_csr(self, csr: x509.CertificateSigningRequest) -> bytes:
        """What the fleet CA does with a device's CSR: a client certificate for its subject (PEM)."""
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self.ca.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.ca_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)

    def fleet_conf(self) -> str:
        """deploy/mosquitto/fleet.conf and fleet.acl as shipped, with this PKI's files (the listener comes
        from LocalBroker)."""
        acl = self.dir / "fleet.acl"
        acl.write_text((DEPLOY / "fleet.acl").read_text())
        conf = (DEPLOY / "fleet.conf").read_text()
        assert "use_username_as_clientid true" in conf
        for shipped, ours in (("/etc/mosquitto/fleet-ca.pem", self.ca_file), ("/etc/mosquitto/broker.pem",
                              self.broker_cert), ("/etc/mosquitto/broker.key", self.broker_key),
                              ("/etc/mosquitto/fleet.acl", acl)):
            assert shipped in conf
            conf = conf.replace(shipped, str(ours))
        lines = [line for line in conf.splitlines() if not line.startswith(("listener ", "persistence "))]
        return "\n".join(lines) + "\n"

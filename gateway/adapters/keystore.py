"""The device signing key on disk: create it (mode 0600), load it, refuse one others can read."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..errors import ConfigError
from .fs import safe_dir, write_atomic

__all__ = ["certificate_request", "generate_key", "load_private_key", "load_public_key", "public_pem"]


def generate_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """Create a P-256 key as PKCS#8 PEM with mode 0600, atomically; never overwrite one.

    Raises:
        ConfigError: the file exists or cannot be written.
    """
    p = Path(path)
    exists = f"{p}: a key already exists; remove it first if you really want a new device identity"
    if p.exists() or p.is_symlink():
        raise ConfigError(exists)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        safe_dir(p.parent)
        write_atomic(p, pem, mode=0o600, exclusive=True)
    except FileExistsError as exc:  # created meanwhile: never overwrite a device identity
        raise ConfigError(exists) from exc
    except OSError as exc:
        raise ConfigError(f"{p}: cannot write key: {exc.strerror}") from exc
    return key


def load_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """Load the device key, refusing a file that group or others can read.

    Raises:
        ConfigError: missing, unreadable, too open, not a P-256 private key.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"device.key_file: {p}: {exc.strerror} (create one with "
                          f"'battery-gateway keygen --key {p}')") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"device.key_file: {p} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                          f"run 'chmod 600 {p}'")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"device.key_file: {p}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"device.key_file: {p}: not a P-256 (ES256) key")
    return key


def load_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    """Load a P-256 public key (SubjectPublicKeyInfo PEM), or take the public half of a private key.

    Raises:
        ConfigError: missing, unreadable, or not P-256.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: {exc.strerror}") from exc
    try:
        key: object = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{p}: not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{p}: not a P-256 (ES256) public key")
    return key


def public_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """SubjectPublicKeyInfo PEM of the key's public half."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def certificate_request(key_path: str | Path, device_id: str) -> bytes:
    """A PEM CSR (PKCS#10) with CN = ``device_id`` for the fleet CA, for the TLS key at ``key_path``,
    which is created (P-256, mode 0600) when missing. The CA's certificate then maps to the MQTT username
    (``use_identity_as_username``).

    Raises:
        ConfigError: the key cannot be created or read.
    """
    key = load_private_key(key_path) if Path(key_path).exists() else generate_key(key_path)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)

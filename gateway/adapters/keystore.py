"""The device signing key on disk: create it (mode 0600), load it, refuse one others can read."""

from __future__ import annotations

import errno
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..errors import ConfigError
from .fs import read_regular, safe_dir, write_atomic

_MAX_PEM_BYTES = 65536  # a PEM key or certificate is a few kB

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


def load_private_key(path: str | Path, *, what: str = "device.key_file") -> ec.EllipticCurvePrivateKey:
    """Load a P-256 private key, refusing a file that group or others can read, or that is not a regular
    file (``/dev/zero``, a FIFO) or is too large to be a key.

    Args:
        what: the config key or option that named the file, for the message.

    Raises:
        ConfigError: missing, unreadable, too open, not a P-256 private key.
    """
    p = Path(path)
    try:
        data = read_regular(p, max_bytes=_MAX_PEM_BYTES, private=True)  # the mode is checked before reading
    except PermissionError as exc:
        raise ConfigError(f"{what}: {p} is {exc.strerror}; run 'chmod 600 {p}'") from exc
    except OSError as exc:
        hint = f" (create one with 'battery-gateway keygen --key {p}')" if exc.errno == errno.ENOENT else ""
        raise ConfigError(f"{what}: {p}: {exc.strerror}{hint}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what}: {p}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{what}: {p}: not a P-256 (ES256) key")
    return key


def load_public_key(path: str | Path, *, what: str = "") -> ec.EllipticCurvePublicKey:
    """Load a P-256 public key (SubjectPublicKeyInfo PEM), or take the public half of a private key.

    Args:
        what: the config key or option that named the file, for the message.

    Raises:
        ConfigError: missing, unreadable, not a regular file, or not P-256.
    """
    p = Path(path)
    where = f"{what}: {p}" if what else str(p)
    try:
        data = read_regular(p, max_bytes=_MAX_PEM_BYTES)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from exc
    try:
        key: object = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{where}: not a P-256 (ES256) public key")
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
    key = load_private_key(key_path, what="csr --key") if Path(key_path).exists() else generate_key(key_path)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)

"""Composition root of ``battery-gateway verify``, the backend's check of what devices signed: which
key to trust for which device, and where the envelopes come from (files, directories, or an MQTT
subscription). The checks themselves are ``core/chainverify.py``.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from ..adapters.fs import read_regular
from ..adapters.keystore import load_public_key
from ..adapters.mqtt import PahoSubscriber
from ..core.qrclaim import PREFIX
from ..errors import ConfigError
from ..model import DEVICE_ID

log = logging.getLogger(__name__)

__all__ = ["envelopes_from_files", "envelopes_from_mqtt", "split_qr_texts", "trusted_keys"]


def trusted_keys(*, pubkey: str | None, trust_dir: str | None,
                 recheck_s: float | None = None) -> Callable[[str], ec.EllipticCurvePublicKey | None]:
    """Device id -> trusted public key: one key for every device (``--pubkey``) or ``DIR/<dev>.pem``.

    Only a device id (``model.DEVICE_ID``) is ever made into a file name. With ``recheck_s`` (a
    long-running ingest) an answer is remembered that long only: a device enrolled later is trusted, and
    one whose PEM was removed is refused, without a restart. An unreadable PEM is no key (logged once).

    Raises:
        ConfigError: the key file or directory is unreadable.
    """
    if pubkey:
        key = load_public_key(pubkey, what="verify --pubkey")
        return lambda dev: key
    assert trust_dir is not None
    directory = Path(trust_dir)
    if not directory.is_dir():
        raise ConfigError(f"verify --trust: {directory} is not a directory")
    cache: dict[str, tuple[ec.EllipticCurvePublicKey | None, float]] = {}
    broken: set[str] = set()

    def lookup(dev: str) -> ec.EllipticCurvePublicKey | None:
        now = time.monotonic()
        hit = cache.get(dev)
        if hit is not None and (recheck_s is None or now - hit[1] < recheck_s):
            return hit[0]
        key = None
        if DEVICE_ID.fullmatch(dev):  # never ".." or a path
            path = directory / f"{dev}.pem"
            try:
                key = load_public_key(path) if path.is_file() else None
            except (ConfigError, OSError) as exc:
                if dev not in broken:
                    broken.add(dev)
                    log.error("trusted key of %s unreadable, its messages are rejected: %s", dev, exc)
        if len(cache) > 1_000_000:  # ids claimed by junk are remembered too: bounded
            cache.clear()
        cache[dev] = (key, now)
        return key

    return lookup


def split_qr_texts(names: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """((name, QR text), ...) for every argument that is a certificate's QR text (``BP1:...``) or a small
    file holding one; the other arguments (envelope files and directories) as they were."""
    texts, rest = [], []
    for name in names:
        if name.startswith(PREFIX):
            texts.append(("QR text", name))
            continue
        try:
            head = read_regular(name, max_bytes=8192)
        except OSError:
            head = b""  # not a small regular file: envelopes_from_files reads or names it
        if head.lstrip().startswith(PREFIX.encode()):
            texts.append((name, head.decode("ascii", "replace")))
            continue
        rest.append(name)
    return texts, rest


def envelopes_from_files(names: list[str]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file named, directories expanded in name order.

    Raises:
        ConfigError: a name that does not exist.
    """
    for name in names:
        path = Path(name)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
        elif path.is_file():
            files = [path]
        else:
            raise ConfigError(f"verify: {path} does not exist")
        for f in files:
            yield str(f), f.read_bytes()


def envelopes_from_mqtt(address: str, *, topic: str, duration_s: float | None,
                        tls: list[str] | None, protocol: str = "5",
                        stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) of the signed messages on a subscription, until ``duration_s`` (or forever) or
    until ``stop()`` says so.

    Raises:
        ConfigError: a malformed HOST:PORT.
        PublishError: the broker cannot be reached, or refuses the connection or the subscription (also
            later: a subscription that stops is not a quiet "nothing arrived").
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"verify --mqtt: expected HOST:PORT, got {address!r}")
    subscriber = PahoSubscriber(host=host, port=int(port), topic=topic,
                                tls_files=(tls[0], tls[1], tls[2]) if tls else None, protocol=protocol)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        subscriber.wait_ready()
        while not stop() and (deadline is None or time.monotonic() < deadline):
            try:
                name, payload = subscriber.messages.get(timeout=0.2)
            except queue.Empty:
                subscriber.check()
                continue
            if not name.endswith(("/status", "/ota")) and "/cmd/" not in name:
                yield name, payload
    finally:
        subscriber.close()

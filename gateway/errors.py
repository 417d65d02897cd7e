"""Exception tree of the gateway, split by whose fault a failure is.

::

    GatewayError
    ├── DataError                 the input was wrong; skip it, count it, carry on
    │   ├── ConfigError           a config or profile key is missing, mistyped or out of range
    │   ├── DecodeError           a CAN frame failed its CRC, length or invalid-marker check
    │   │   └── UdsNegativeResponse   the ECU answered 7F <service> <NRC> (``nrc`` attribute)
    │   ├── CaptureError          a capture file line cannot be read (names file and line)
    │   └── EnvelopeError         a COSE envelope is malformed, forged, or breaks its chain
    └── TransportError            a device or peer failed; retry, or exit so systemd restarts us
        ├── BusError              the CAN interface cannot be opened or went away
        ├── PublishError          the MQTT broker refused or is unreachable
        ├── InspectionError       the battery ECU did not answer an inspection
        ├── StateError            the state directory cannot be read or written (disk full, read-only)
        ├── StoreError            the backend's database (ingest) is unreachable or refused a batch
        └── UpdateError           an over-the-air update was refused, interrupted or failed to install

Scenarios: a ``1DB`` frame with a bad CRC raises ``DecodeError`` (frame_id=0x1DB) and is dropped;
``[mqtt] port = "x"`` raises ``ConfigError`` naming ``mqtt.port``; ``can0`` missing raises ``BusError``;
a tampered envelope raises ``EnvelopeError`` in ``verify``; a full disk raises ``StateError``; a release
bundle whose hash does not match the signed TUF metadata raises ``UpdateError`` (kind ``refused``).

Programmer misuse raises the built-in ``ValueError``/``RuntimeError`` instead.
"""

from __future__ import annotations

__all__ = [
    "BusError",
    "CaptureError",
    "ConfigError",
    "DataError",
    "DecodeError",
    "EnvelopeError",
    "GatewayError",
    "InspectionError",
    "PublishError",
    "StateError",
    "StoreError",
    "TransportError",
    "UdsNegativeResponse",
    "UpdateError",
]


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class DataError(GatewayError):
    """Bad input: the data, not the device, is at fault."""


class ConfigError(DataError):
    """One or more configuration or profile problems; ``problems`` lists each one as a line."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class DecodeError(DataError):
    """A CAN frame could not be decoded; ``frame_id`` names it and ``kind`` says why (for counting)."""

    def __init__(self, message: str, *, frame_id: int, kind: str) -> None:
        super().__init__(message)
        self.frame_id = frame_id
        self.kind = kind


class CaptureError(DataError):
    """A capture file cannot be read; ``path`` and ``line`` (1-based, 0 if unknown) name the culprit."""

    def __init__(self, message: str, *, path: str, line: int = 0) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class UdsNegativeResponse(DecodeError):
    """The ECU answered a diagnostic request with ``7F <service> <nrc>``."""

    def __init__(self, message: str, *, frame_id: int, nrc: int) -> None:
        super().__init__(message, frame_id=frame_id, kind="nrc")
        self.nrc = nrc


class EnvelopeError(DataError):
    """A signed envelope failed verification; the message says why."""


class TransportError(GatewayError):
    """A device, peer or the disk failed."""


class BusError(TransportError):
    """The CAN interface could not be opened or stopped working."""


class PublishError(TransportError):
    """The MQTT broker could not be reached or refused the device."""


class InspectionError(TransportError):
    """The battery ECU did not answer an inspection (names the ids that stayed silent)."""


class StateError(TransportError):
    """The state directory could not be read or written."""


class StoreError(TransportError):
    """The ingest's database could not be reached or refused a batch (nothing of it was committed).

    ``refused_data``: the database was there and refused what the batch holds (a value out of its range),
    so sending the same batch again cannot help; otherwise it was unreachable or busy (retry).
    """

    def __init__(self, message: str, *, refused_data: bool = False) -> None:
        super().__init__(message)
        self.refused_data = refused_data


class UpdateError(TransportError):
    """An update did not happen; ``kind`` says why, for the result on the ``ota`` topic.

    Kinds: ``refused`` (TUF verification, downgrade, wrong hardware: never retried with the same
    metadata), ``download`` (network; the partial download is kept and resumed), ``install`` (the bundle
    did not install; nothing was switched), ``busy`` (another update is running).
    """

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind

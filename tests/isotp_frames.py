"""Build ISO-TP frame sequences (normal addressing, 8-byte frames) for tests and fixtures."""

from __future__ import annotations


def segment(message: bytes, *, pad: int = 0x00) -> list[bytes]:
    """Split a message into single frame, or first + consecutive frames, padded to 8 bytes."""
    if len(message) <= 7:
        return [bytes([len(message)]) + message + bytes([pad]) * (7 - len(message))]
    frames = [bytes([0x10 | len(message) >> 8, len(message) & 0xFF]) + message[:6]]
    rest, sn = message[6:], 1
    while rest:
        chunk, rest = rest[:7], rest[7:]
        frames.append(bytes([0x20 | sn]) + chunk + bytes([pad]) * (7 - len(chunk)))
        sn = (sn + 1) & 0x0F
    return frames

"""python-can bus -> ``FrameSource`` that can also send. The only module that opens a CAN interface
(the daemon's, the inspection's, and the simulated battery ECU's in ``gateway/sim``).

The frame ids asked for are installed as bus filters (in the kernel on socketcan), so unrelated
traffic never reaches Python. python-can's config-file lookup is off: the TOML file is the only source.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import can

from ..errors import BusError
from ..model import Frame

__all__ = ["PythonCanBus"]

log = logging.getLogger(__name__)


class PythonCanBus:
    """Implements ``FrameSource`` (and ``send``) on any python-can interface."""

    def __init__(self, *, interface: str, channel: str, bitrate: int, frame_ids: Iterable[int],
                 udp_multicast_port: int = 43113) -> None:
        """Open the bus with one exact-match filter per frame id.

        Raises:
            BusError: the interface or channel cannot be opened.
        """
        filters: list[can.typechecking.CanFilter] = [  # an id above 0x7FF is a 29-bit one
            {"can_id": i, "can_mask": 0x1FFFFFFF if i > 0x7FF else 0x7FF, "extended": i > 0x7FF}
            for i in sorted(frame_ids)]
        options: dict[str, Any] = {"port": udp_multicast_port} if interface == "udp_multicast" else {}
        try:
            # socketcan ignores bitrate (systemd-networkd sets it on the interface); slcan, pcan... use it.
            self._bus = can.Bus(interface=interface, channel=channel, bitrate=bitrate, can_filters=filters,
                                ignore_config=True, **options)
        except (can.CanError, OSError, ValueError, ImportError, NotImplementedError) as exc:
            # NotImplementedError: python-can's "interface ... not supported"
            raise BusError(f"can: cannot open {interface} channel {channel!r}: {exc}") from exc
        # socketcan stamps frames in the kernel on this host's clock; udp_multicast and virtual carry the
        # sender's stamp, so those frames are stamped on arrival, in this process's clock.
        self._local_stamp = interface != "socketcan"
        log.info("CAN %s %s open, %d filters", interface, channel, len(filters))

    def recv(self, timeout_s: float) -> Frame | None:
        """One frame, or None after ``timeout_s``.

        Raises:
            BusError: the interface went away.
        """
        try:
            msg = self._bus.recv(timeout_s)
        except (can.CanError, OSError) as exc:
            raise BusError(f"can: read failed: {exc}") from exc
        if msg is None or msg.is_error_frame or msg.is_remote_frame:
            return None
        ts = time.time() if self._local_stamp else msg.timestamp
        return Frame(ts, msg.arbitration_id, bytes(msg.data), 0, msg.is_extended_id)

    def send(self, can_id: int, data: bytes) -> None:
        """Put one frame on the bus (diagnostic requests and flow control).

        Raises:
            BusError: the interface refused it (bus off, no ACK, interface down).
        """
        try:
            self._bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=can_id > 0x7FF), timeout=0.1)
        except (can.CanError, OSError) as exc:
            raise BusError(f"can: send of 0x{can_id:03X} failed: {exc}") from exc

    def close(self) -> None:
        """Shut the bus down; safe to call twice."""
        self._bus.shutdown()

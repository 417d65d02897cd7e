"""The python-can adapter: profile ids as bus filters, frames out as ``Frame``, clean errors and shutdown."""

from __future__ import annotations

import uuid

import can
import pytest

from gateway.adapters.can_bus import PythonCanBus
from gateway.errors import BusError


def test_only_profile_ids_reach_the_gateway() -> None:
    channel = f"bgw-{uuid.uuid4()}"
    source = PythonCanBus(interface="virtual", channel=channel, bitrate=500000, frame_ids={0x1DB, 0x55B})
    car = can.Bus(interface="virtual", channel=channel)
    try:
        for can_id in (0x100, 0x1DB, 0x7BB, 0x55B, 0x1DB | 0x1000):
            car.send(can.Message(arbitration_id=can_id, data=bytes([can_id & 0xFF] * 8),
                                 is_extended_id=can_id > 0x7FF))
        got = []
        while (frame := source.recv(0.2)) is not None:
            got.append(frame)
    finally:
        car.shutdown()
        source.close()
    assert [f.can_id for f in got] == [0x1DB, 0x55B]
    assert got[0].data == bytes([0xDB] * 8) and got[0].ts > 0


def test_socketcan_without_the_interface_is_a_bus_error_naming_it() -> None:
    with pytest.raises(BusError, match=r"socketcan channel 'can9'"):
        PythonCanBus(interface="socketcan", channel="can9", bitrate=500000, frame_ids={0x1DB})


def test_unknown_interface_is_a_bus_error() -> None:
    with pytest.raises(BusError, match="nosuchbus"):
        PythonCanBus(interface="nosuchbus", channel="x", bitrate=500000, frame_ids={0x1DB})

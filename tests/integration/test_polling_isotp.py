"""Active polling through can-isotp against the simulated battery ECU on a real python-can bus."""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gateway.adapters.can_bus import PythonCanBus
from gateway.adapters.isotp import MAX_PENDING, IsoTpDiagClient, KernelIsoTpDiagClient, open_diag_client
from gateway.app.wiring import load_profile
from gateway.core.battery import BatteryTracker
from gateway.errors import BusError
from gateway.model import Frame
from gateway.services.diagnostics import DiagService
from gateway.services.pipeline import Pipeline
from gateway.sim.battery import LeafBattery, SimPack
from gateway.sim.ecu import REQUEST_IDS, LbcResponder, run_ecu
from gateway.sim.profile_bms import ProfileBms
from tests.pipelines import memory_pipeline


@dataclass
class Rig:
    pipeline: Pipeline
    tracker: BatteryTracker
    diag: DiagService
    source: PythonCanBus
    responder: LbcResponder

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            frame = self.source.recv(0.005 if self.diag.client.busy else 0.05)
            if frame is not None and not self.diag.on_frame(frame):
                self.pipeline.on_frame(frame)
            self.diag.step(time.time())


def make_rig(generation: str, *, faults: dict[int, str] | None = None, broadcast: bool = True,
             hx: float | None = None) -> Iterator[Rig]:
    channel = f"bgw-{uuid.uuid4()}"
    parts = memory_pipeline(f"leaf-{generation}", vin_salt=b"salt")
    pipeline, profile = parts.pipe, parts.profile
    source = PythonCanBus(interface="virtual", channel=channel, bitrate=500000, frame_ids=profile.frame_ids)
    battery = LeafBattery(generation=generation, soh_pct=random.randint(60, 95), rated_ah=115.0)
    responder = LbcResponder(battery, hx_pct=hx if hx is not None else round(random.uniform(60, 99), 2),
                             faults=faults or {})
    ecu_bus = PythonCanBus(interface="virtual", channel=channel, bitrate=500000, frame_ids=REQUEST_IDS)
    stop = threading.Event()
    ecu = threading.Thread(target=run_ecu, args=(battery, ecu_bus),
                           kwargs={"duration_s": 30, "stop": stop.is_set, "responder": responder,
                                   "broadcast": broadcast})
    ecu.start()
    try:
        diag = DiagService(profile.polls, IsoTpDiagClient(source.send), on_reply=pipeline.on_diag_reply,
                           vehicle_state=pipeline.vehicle_state, retry_s=1.0)
        yield Rig(pipeline, parts.tracker, diag, source, responder)
    finally:
        stop.set()
        ecu.join(5)
        ecu_bus.close()
        source.close()


@pytest.fixture(params=["ze0", "aze0", "ze1"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    yield from make_rig(request.param)


def test_every_group_is_polled_and_decoded(rig: Rig) -> None:
    rig.run(3.0)
    t = rig.tracker
    assert t.values["hx_pct"] == pytest.approx(rig.responder.hx_pct, abs=0.01)
    b = rig.responder.battery
    assert t.values["capacity_ah"] == pytest.approx(b.rated_ah * b.soh_pct / 100, abs=0.001)
    assert len(t.arrays["cells_v"]) == 96
    assert t.values["cell_v_max"] - t.values["cell_v_min"] == pytest.approx(0.024, abs=0.002)
    assert t.arrays["temps_c"] == [b.temp_c + 1, b.temp_c, b.temp_c - 1]
    assert t.texts["bat"] == "230UK1192E001482"
    assert t.texts["part_number"] == "3NK2ARB"
    assert len(t.texts["vin_hash"]) == 32 and "SJNFAAZE1U0012345" not in repr(t.texts)
    assert rig.responder.overlaps == 0  # never a second request while the ECU is answering
    if b.generation == "ze1":
        assert t.values["lbc_soh_pct"] == b.soh_pct


@pytest.mark.parametrize("fault,kind", [("nrc", "nrc"), ("silent", "timeout"), ("drop", "isotp_sequence"),
                                        ("dup", "isotp_sequence"), ("short", "layout")])
def test_a_broken_group_01_reply_gives_no_hx(fault: str, kind: str) -> None:
    for rig in make_rig("ze1", faults={0x01: fault}):
        rig.run(2.5)
        assert "hx_pct" not in rig.tracker.values  # never a garbage Hx
        assert rig.diag.counts[kind] >= 1 or rig.pipeline.counts[kind] >= 1, (rig.diag.counts, rig.pipeline.counts)
        assert len(rig.tracker.arrays["cells_v"]) == 96  # the other groups still work
        assert rig.responder.requests.count(0x01) >= 2  # retried later


def test_a_silent_reply_is_retried_and_then_succeeds() -> None:
    for rig in make_rig("aze0", faults={0x01: "once-silent"}, hx=77.7):
        rig.run(3.0)
        assert rig.tracker.values["hx_pct"] == 77.7
        assert rig.diag.counts["timeout"] == 1


def test_a_sleeping_car_is_not_polled() -> None:
    for rig in make_rig("ze1", broadcast=False):
        rig.run(1.5)
        assert rig.responder.requests == []
        assert rig.pipeline.vehicle_state() == "off"


def test_the_transport_is_the_kernels_on_socketcan_and_user_space_elsewhere(
        caplog: pytest.LogCaptureFixture) -> None:
    sent: list[tuple[int, bytes]] = []
    # GIVEN a virtual bus: the user-space stack, quietly
    with caplog.at_level(logging.WARNING):
        assert isinstance(open_diag_client("virtual", "x", lambda i, d: sent.append((i, d))), IsoTpDiagClient)
    assert not caplog.records
    # GIVEN socketcan on a kernel without ISO-TP sockets (this one has no AF_CAN; the VM test has both)
    if hasattr(socket, "AF_CAN") and _kernel_can_isotp():
        pytest.skip("this kernel has ISO-TP sockets: tools/vm/guest/isotp_check.py covers them")
    with caplog.at_level(logging.WARNING):
        client = open_diag_client("socketcan", "can0", lambda i, d: sent.append((i, d)))
    # THEN the user-space stack, said once, naming the channel
    assert isinstance(client, IsoTpDiagClient)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "can0" in warnings[0] and "user-space ISO-TP" in warnings[0], warnings
    client.start(0x79B, 0x7BB, bytes([0x21, 0x01]), timeout_s=1)
    assert sent and sent[0][0] == 0x79B  # and it polls through the bus it was given


def _kernel_can_isotp() -> bool:
    try:
        KernelIsoTpDiagClient("lo").close()
    except BusError:
        return False
    return True


def test_response_pending_is_waited_for_and_the_reply_then_decoded() -> None:
    for rig in make_rig("aze0", faults={0x01: "pending"}, hx=81.5):
        rig.run(2.0)
        assert rig.tracker.values["hx_pct"] == 81.5
        assert rig.diag.counts["nrc"] == 0


def test_an_ecu_that_only_ever_says_response_pending_does_not_hold_polling_forever() -> None:
    client = IsoTpDiagClient(lambda i, d: None)
    client.start(0x79B, 0x7BB, bytes([0x21, 0x01]), timeout_s=1.0)
    pending = Frame(ts=0.0, can_id=0x7BB, data=bytes([0x03, 0x7F, 0x21, 0x78, 0, 0, 0, 0]))
    outcomes = []
    for _ in range(MAX_PENDING + 1):
        client.feed(pending)
        outcomes.append(client.poll())
    # the first MAX_PENDING extend the wait; the next is the answer (a negative one, counted as such)
    assert outcomes == [None] * MAX_PENDING + [("ok", b"\x7f\x21\x78")]
    assert not client.busy


def test_a_request_the_bus_refuses_is_an_outcome_not_a_crash() -> None:
    def refuse(can_id: int, data: bytes) -> None:
        raise BusError(f"can: send of 0x{can_id:03X} failed: [Errno 105] No buffer space available")

    client = IsoTpDiagClient(refuse)
    client.start(0x79B, 0x7BB, bytes([0x21, 0x01]), timeout_s=1.0)
    outcome = client.poll()
    assert outcome is not None and outcome[:2] == ("error", "can_send") and "0x79B" in str(outcome[2])
    assert not client.busy  # the next poll can go when it is due


def test_a_car_read_only_by_polls_is_found_on_by_a_seldom_probe_and_then_polled() -> None:
    # GIVEN a Kona/e-Niro, whose battery ECU only answers polls: no broadcast frame says it is on
    channel = f"bgw-{uuid.uuid4()}"
    parts = memory_pipeline("kia-eniro-64")
    profile, databases = load_profile("kia-eniro-64")
    bms = ProfileBms(profile, databases, SimPack(rated_kwh=64.0, rated_ah=180.0, soh_pct=91, cells=98))
    source = PythonCanBus(interface="virtual", channel=channel, bitrate=500000, frame_ids=profile.frame_ids)
    ecu_bus = PythonCanBus(interface="virtual", channel=channel, bitrate=500000, frame_ids=bms.request_ids)
    stop = threading.Event()
    ecu = threading.Thread(target=run_ecu, args=(bms, ecu_bus),
                           kwargs={"duration_s": 30, "stop": stop.is_set, "responder": bms, "broadcast": False})
    ecu.start()
    try:
        diag = DiagService(profile.polls, IsoTpDiagClient(source.send), on_reply=parts.pipe.on_diag_reply,
                           vehicle_state=parts.pipe.vehicle_state, retry_s=1.0)
        rig = Rig(parts.pipe, parts.tracker, diag, source, bms)  # type: ignore[arg-type]
        assert parts.pipe.vehicle_state() == "off"
        rig.run(2.0)
        # THEN the probe (22 01 01, allowed in "off") found it on, and the SOH poll followed at once
        assert bms.requests[:2] == [bytes([0x22, 0x01, 0x01]), bytes([0x22, 0x01, 0x05])]
        assert parts.pipe.vehicle_state() == "driving" and not parts.tracker.missing()  # the relay bit of 0x0101
        assert parts.tracker.values["bms_soh_pct"] == 91.0
        # a car read only by polls: its pace is the slowest state's quickest poll (awake, charging: 5 s)
        assert profile.poll_pace_s == 5.0 and parts.tracker.max_gap_s == 7.5
    finally:
        stop.set()
        ecu.join(5)
        ecu_bus.close()
        source.close()


def test_a_sleeping_car_is_asked_at_most_every_30_s() -> None:
    from gateway.core.polls import parse_polls

    problems: list[str] = []
    parse_polls([{"name": "p", "request_id": 0x7E4, "response_id": 0x7EC, "request": [0x22, 0x01, 0x01],
                  "every_s": {"off": 5, "awake": 5}, "layout": [{"length": 1, "fields": []}]}], problems)
    assert problems == ["poll[0].every_s.off: at least 30 s (a car that is off is asked seldom)"]

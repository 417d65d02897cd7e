"""A car read only by polls (Hyundai/Kia, Zoe, VW, BMW): its replies are its only frames. Its current is
integrated at its poll pace, one lost reply is no key-off, and a probe of a car that is off is sent no more
often than its own interval, also when it fails."""

from __future__ import annotations

from gateway.app.wiring import load_profile
from gateway.core.battery import BatteryTracker
from gateway.model import Frame
from gateway.services.diagnostics import DiagService
from gateway.sim.battery import SimPack
from gateway.sim.profile_bms import ProfileBms
from tests.pipelines import memory_pipeline

KONA = load_profile("kia-eniro-64")


def reply(bms: ProfileBms, name: str) -> bytes:
    spec = next(p for p in KONA[0].polls if p.name == name)
    return spec.positive_header + bms.reply_payload(spec)


def test_the_current_of_a_car_read_by_polls_is_counted_at_its_poll_pace() -> None:
    profile, _ = KONA
    assert profile.poll_pace_s == 5.0  # awake and charging: 5 s; driving: 2 s
    tracker = BatteryTracker(profile)
    for k in range(720):  # one hour at +50 A, a reply every 5 s
        tracker.update(k * 5.0, [("pack_v", 360.0), ("pack_a", 50.0)])
    assert abs(tracker.counters.ah_charged - 50.0) < 0.1


def test_one_lost_reply_is_no_key_off_but_a_silence_of_four_paces_is() -> None:
    rig = memory_pipeline("kia-eniro-64")
    profile, databases = KONA
    bms = ProfileBms(profile, databases, SimPack(rated_kwh=64, rated_ah=180, soh_pct=91, cells=98), clock=lambda: 0.0)
    t0 = 1e9
    reasons: list[str] = []
    for t in (0, 5, 15, 20):  # the reply due at 10 s was lost
        rig.pipe.on_diag_reply(0x7EC, reply(bms, "bms-did-0101"), t0 + t)
        rig.pipe.on_diag_reply(0x7EC, reply(bms, "bms-did-0105-soh"), t0 + t)
        reasons += [m.body.get("ext", {}).get("reason") for m in rig.tick(t0 + t + 4.9) if m.kind == "passport"]
    assert "key-off" not in reasons and rig.pipe.vehicle_state() != "off"
    later = [m.body["ext"]["reason"] for m in rig.tick(t0 + 20 + 20.1) if m.kind == "passport"]
    assert later == ["key-off"] and rig.pipe.vehicle_state() == "off"


class SilentClient:
    """A DiagClient whose requests all time out at once (a car that is off)."""

    def __init__(self) -> None:
        self.sent: list[float] = []
        self.now = 0.0
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def start(self, request_id: int, response_id: int, request: bytes, *, timeout_s: float,
              ext: tuple[int, int] | None = None) -> None:
        self.sent.append(self.now)
        self._busy = True

    def feed(self, frame: Frame) -> None:
        pass

    def poll(self) -> tuple[str, ...] | None:
        if not self._busy:
            return None
        self._busy = False
        return ("timeout", "no reply")

    def close(self) -> None:
        pass


def test_a_probe_of_a_car_that_is_off_is_sent_once_a_minute_even_when_it_fails() -> None:
    client = SilentClient()
    diag = DiagService(KONA[0].polls, client, on_reply=lambda *a: "ok", vehicle_state=lambda: "off")
    for step in range(0, 3000):  # 300 s in 0.1 s steps
        client.now = step / 10
        diag.step(client.now)
    assert client.sent == [0.0, 60.1, 120.2, 180.3, 240.4]  # only the probe (22 01 01), 60 s after each failure

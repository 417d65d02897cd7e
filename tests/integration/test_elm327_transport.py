"""The ELM327 transport against a real ELM327 emulator from PyPI (ELM327-emulator), on a pseudo-terminal and
over TCP, answering the profiles' requests with the same simulated battery values as the CAN simulator.

The emulator is configured with the replies ``ProfileBms`` makes (headers on, one line per CAN frame, as a
dongle prints them); the gateway's adapter, can-isotp in listen mode and the profile's layouts do the rest.
"""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from itertools import pairwise
from pathlib import Path

import pytest
from elm import Elm
from elm.obd_message import DT, ELM_FOOTER, HD, ST, SZ, ObdMessage

from gateway.adapters.elm327 import Elm327
from gateway.app.wiring import load_profile
from gateway.core.decoding import Decoder
from gateway.core.polls import PollSpec, decode_reply
from gateway.core.profile import Profile
from gateway.sim.battery import LeafBattery, SimPack
from gateway.sim.ecu import segment
from gateway.sim.profile_bms import ProfileBms
from tests.rig import Rig, Subscriber, count, signed, start_daemon, stop_daemon

KONA = load_profile("kia-eniro-64")


@pytest.fixture(autouse=True)
def quiet_emulator(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator configures logging from its elm.yaml: a file elm.log in the working directory, and every
    logger of this process disabled. Point it at a configuration that changes nothing."""
    config = tmp_path_factory.mktemp("elm") / "logging.yaml"
    config.write_text("version: 1\ndisable_existing_loggers: false\n")
    monkeypatch.setenv("ELM_LOG_CFG", str(config))


def kona_bms() -> ProfileBms:
    profile, databases = KONA
    return ProfileBms(profile, databases, SimPack(rated_kwh=64.0, rated_ah=180.0, soh_pct=91, soc_pct=53.0,
                                                  cells=98), clock=lambda: 0.0)


def lines_of(spec: PollSpec, message: bytes) -> str:
    """The emulator's reply: one header/size/data line per CAN frame (a single frame without its padding)."""
    out = ""
    for frame in segment(message):
        body = frame[1:1 + frame[0]] if frame[0] >> 4 == 0 else frame[1:]
        out += HD(f"{spec.response_id:03X}") + SZ(f"{frame[0]:02X}") + DT(" ".join(f"{b:02X}" for b in body))
    return out


def scenario(profile: Profile, bms: ProfileBms, **override: str) -> dict[str, dict[str, str]]:
    """One emulator entry per poll; ``override``: poll name -> a raw response instead."""
    return {spec.name: {"Request": "^" + spec.request.hex().upper() + ELM_FOOTER, "Descr": spec.name,
                        "Header": f"{spec.request_id:03X}",
                        "Response": override.get(spec.name) or lines_of(spec, spec.positive_header
                                                                         + bms.reply_payload(spec))}
            for spec in profile.polls}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def emulator(entries: dict[str, dict[str, str]], *, port: int | None = None, monitor: list[str] | None = None,
             slcan_port: str | None = None) -> Iterator[str]:
    """A running emulator with ``entries``; yields the channel: ``socket://...`` with ``port``, else its pty.
    ``monitor``: the lines AT MA prints. ``slcan_port``: it plays an SLCAN adapter on that serial line instead
    (yields that line's name)."""
    kwargs = {"net_port": port} if port else {"slcan_port": slcan_port} if slcan_port else {}
    with Elm(**kwargs) as emu:
        emu.ObdMessage = copy.deepcopy(ObdMessage)  # the module's table is shared: change a copy
        emu.ObdMessage["bgw"] = entries
        if monitor is not None:
            emu.ObdMessage["AT"]["AT_MA"]["Response"] = "".join(ST(line) for line in monitor)
        emu.set_sorted_obd_msg("bgw")
        if slcan_port:
            yield slcan_port
            return
        deadline = time.monotonic() + 10
        while True:  # the emulator's thread opens its port
            name = emu.get_port_name() if not port else None
            if port:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    pass
            elif name and "/dev/" in str(name):
                break
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        yield f"socket://127.0.0.1:{port}" if port else str(emu.get_pty())


def inspect_through(tmp: Path, can: str, profile: str = "kia-eniro-64"
                    ) -> tuple[subprocess.CompletedProcess[str], float]:
    """``battery-gateway inspect`` with the ``[can]`` lines ``can``: its outcome and its wall time."""
    subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(tmp / "key.pem")], check=True,
                   capture_output=True)
    config = tmp / "g.toml"
    config.write_text(f'[device]\nid = "gw-bay"\nkey_file = "{tmp / "key.pem"}"\nstate_dir = "{tmp / "state"}"\n'
                      f'[can]\n{can}\n[vehicle]\nprofile = "{profile}"\n[mqtt]\nport = 1\n')
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "gateway", "inspect", "--config", str(config), "--out",
                          str(tmp / "out"), "--wait", "1"], capture_output=True, text=True, timeout=60)
    return out, time.monotonic() - t0


def ask(elm: Elm327, spec: PollSpec) -> tuple[object, ...]:
    elm.start(spec.request_id, spec.response_id, spec.request, timeout_s=spec.timeout_s)
    deadline = time.monotonic() + 10
    while (out := elm.poll()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return out


@pytest.mark.parametrize("link", ["pty", "tcp"])
def test_every_poll_of_a_profile_through_the_dongle_gives_the_simulated_values(link: str) -> None:
    profile, _ = KONA
    bms = kona_bms()
    with emulator(scenario(profile, bms), port=free_port() if link == "tcp" else None) as channel:
        elm = Elm327(channel, bitrate=500000)
        try:
            assert elm.version.startswith("ELM327")
            got: dict[str, float] = {}
            for spec in profile.polls:
                outcome = ask(elm, spec)
                assert outcome[0] == "ok", outcome
                got.update(decode_reply(spec, outcome[1]).values)  # type: ignore[arg-type]
        finally:
            elm.close()
    want = bms.values()
    steps = {f.name: abs(f.scale) for p in profile.polls for lay in p.layouts for f in lay.fields}
    assert set(got) == set(steps)
    for field, step in steps.items():
        assert got[field] == pytest.approx(want[field], abs=step / 2 + 1e-9), field


@pytest.mark.parametrize("answer,kind", [
    (ST("NO DATA"), "timeout"), (ST("CAN ERROR"), "can_send"), (ST("UNABLE TO CONNECT"), "can_send"),
    (ST("BUFFER FULL"), "adapter"), (ST("STOPPED"), "adapter"), (ST("?"), "adapter"),
    (ST("7EC 10 2E 62 01 05 00 00 00") + ST("7EC 22 00 00 00 00 00 00 00"), "isotp_sequence"),  # frame 1 lost
    (ST("7EC 10 2E 62 01 05 00 00 00"), "isotp_incomplete"),  # the rest never came
    (ST("7EC 06 62 01 05 0G 00"), "adapter"), (ST("7ED 03 62 01 05"), "adapter"),  # not hex; another ECU
])
def test_the_dongles_failure_strings_and_broken_replies_are_clean_errors(answer: str, kind: str) -> None:
    profile, _ = KONA
    bms = kona_bms()
    soh = next(p for p in profile.polls if p.name == "bms-did-0105-soh")
    with emulator(scenario(profile, bms, **{soh.name: answer}), port=free_port()) as channel:
        elm = Elm327(channel, bitrate=500000)
        try:
            outcome = ask(elm, soh)
            good = ask(elm, profile.polls[0])  # and the next poll is fine
        finally:
            elm.close()
    assert outcome[0] == ("timeout" if kind == "timeout" else "error"), outcome
    if kind != "timeout":
        assert outcome[1] == kind, outcome
    assert str(outcome[-1]) and "\n" not in str(outcome[-1])  # one line naming what happened
    assert good[0] == "ok"


def test_a_dropped_link_is_reopened_and_polls_go_on() -> None:
    profile, _ = KONA
    bms, port = kona_bms(), free_port()
    spec = profile.polls[0]
    with emulator(scenario(profile, bms), port=port) as channel:
        elm = Elm327(channel, bitrate=500000, reconnect_s=0.2)
        assert ask(elm, spec)[0] == "ok"
    # the dongle is gone (Bluetooth out of range): polls fail cleanly, nothing blocks
    t0 = time.monotonic()
    down = ask(elm, spec)
    assert down[0] in ("error", "timeout") and time.monotonic() - t0 < 5
    with emulator(scenario(profile, bms), port=port):  # back in range
        deadline = time.monotonic() + 15
        while (outcome := ask(elm, spec))[0] != "ok":
            assert time.monotonic() < deadline, outcome
            time.sleep(0.1)
    elm.close()


def test_broadcast_frames_are_monitored_one_id_at_a_time() -> None:
    profile, databases = load_profile("leaf-aze0")
    battery = LeafBattery(generation="aze0", soh_pct=83, soc_pct=61.0, tick_s=0.01)
    frames = list(battery.frames(1.0))
    monitor = [f"{f.can_id:03X} " + " ".join(f"{b:02X}" for b in f.data) for f in frames]
    ids = {s.frame_id for s in profile.signals}
    with emulator({}, port=free_port(), monitor=monitor) as channel:
        elm = Elm327(channel, bitrate=500000, broadcast_ids=ids, monitor_s=0.05)
        try:
            seen: list[int] = []
            deadline = time.monotonic() + 20
            decoder, values = Decoder(profile, databases), {}
            while set(seen) != ids:
                assert time.monotonic() < deadline, sorted(ids - set(seen))
                frame = elm.recv(0.05)
                if frame is not None:
                    seen.append(frame.can_id)
                    values.update(decoder.decode(frame))
        finally:
            elm.close()
    # in turn: every id's frames arrive together, and only the monitored id's
    runs = [seen[0]] + [b for a, b in pairwise(seen) if a != b]
    assert len(runs) == len(set(runs)) == len(ids)
    assert values["bms_soh_pct"] == 83 and values["soc_pct"] == pytest.approx(61.0, abs=0.2)


def test_inspect_through_the_dongle_within_15_s(tmp_path: Path) -> None:
    profile, _ = KONA
    with emulator(scenario(profile, kona_bms()), port=free_port()) as channel:
        out, wall = inspect_through(tmp_path, f'interface = "elm327"\nchannel = "{channel}"')
    assert out.returncode == 0, out.stderr
    print(f"\ninspect through the ELM327 emulator (TCP): {wall:.1f} s")
    assert wall < 15.0
    page = (tmp_path / "out" / "certificate.html").read_text()
    assert "Hyundai Kona Electric / Kia e-Niro 64 kWh" in page and "91" in page


def test_a_profile_the_dongle_cannot_poll_is_refused_naming_the_polls(tmp_path: Path) -> None:
    out, _ = inspect_through(tmp_path, 'interface = "elm327"\nchannel = "/dev/null"', profile="vw-meb")
    assert out.returncode != 0
    assert "elm327 polls with 11-bit ids only; profile vw-meb needs 29-bit ids" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.broker
def test_the_daemon_reads_a_car_through_the_dongle_and_publishes_its_passport(rig: Rig, sub: Subscriber) -> None:
    profile, _ = KONA
    with emulator(scenario(profile, kona_bms()), port=free_port()) as channel:
        text = rig.config.read_text()
        can = text[text.index("[can]"):text.index("[vehicle]")]
        rig.config.write_text(text.replace(can, f'[can]\ninterface = "elm327"\nchannel = "{channel}"\n')
                              .replace('profile = "leaf-aze0"', 'profile = "kia-eniro-64"'))
        daemon = start_daemon(rig)
        try:
            got = sub.collect(count("passport", 1), 60)
        finally:
            code = stop_daemon(daemon)
    assert code == 0, (rig.tmp / "daemon.log").read_text()[-3000:]
    passports = [b for b, _ in signed(rig, got) if b["kind"] == "passport"]
    assert passports, (rig.tmp / "daemon.log").read_text()[-3000:]
    assert passports[0]["ext"]["bms_soh_pct"] == 91.0
    assert passports[0]["doc"]["StateOfCharge"]["StateOfChargeValue"] == 53.0


@contextmanager
def null_modem() -> Iterator[tuple[str, str]]:
    """Two pseudo-terminals joined like a null-modem cable (what socat's pty,pty does): the emulated adapter
    opens one end, the gateway the other."""
    import os
    import select
    import threading
    import tty

    ends = [os.openpty() for _ in range(2)]
    for _, slave in ends:
        tty.setraw(slave)
    stop = threading.Event()

    def relay() -> None:
        masters = {ends[0][0]: ends[1][0], ends[1][0]: ends[0][0]}
        while not stop.is_set():
            ready, _, _ = select.select(list(masters), [], [], 0.05)
            for fd in ready:
                with suppress(OSError):  # an end closed at the finish
                    os.write(masters[fd], os.read(fd, 4096))

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        yield os.ttyname(ends[0][1]), os.ttyname(ends[1][1])
    finally:
        stop.set()
        thread.join(2)
        for master, slave in ends:
            os.close(master)
            os.close(slave)


def test_inspect_through_an_slcan_adapter_canable_with_python_cans_slcan_interface(tmp_path: Path) -> None:
    # the emulator plays a CANable with SLCAN firmware on a serial line; the gateway uses python-can's slcan
    profile, _ = KONA
    with null_modem() as (adapter_end, gateway_end), \
            emulator(scenario(profile, kona_bms()), slcan_port=adapter_end):
        out, wall = inspect_through(tmp_path, f'interface = "slcan"\nchannel = "{gateway_end}"\nbitrate = 500000')
    assert out.returncode == 0, out.stderr
    print(f"\ninspect through an emulated SLCAN adapter: {wall:.1f} s")
    assert wall < 15.0
    assert "[2/2] bms-did-0105-soh: ok" in out.stderr


def test_response_pending_then_the_reply_is_the_reply_and_two_replies_are_an_error() -> None:
    profile, _ = KONA
    bms = kona_bms()
    soh = next(p for p in profile.polls if p.name == "bms-did-0105-soh")
    real = lines_of(soh, soh.positive_header + bms.reply_payload(soh))
    pending = HD("7EC") + SZ("03") + DT("7F 22 78")
    for answer, want in ((pending + real, "ok"), (real + real, "adapter")):
        with emulator(scenario(profile, bms, **{soh.name: answer}), port=free_port()) as channel:
            elm = Elm327(channel, bitrate=500000)
            try:
                outcome = ask(elm, soh)
            finally:
                elm.close()
        assert outcome[0] == ("ok" if want == "ok" else "error"), outcome
        if want == "ok":
            assert decode_reply(soh, outcome[1])  # type: ignore[arg-type]
        else:
            assert outcome[1] == "adapter" and "2 replies" in str(outcome[2])

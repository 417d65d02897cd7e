"""When readings and passports are published, and that each leaves only after its state was saved."""

from __future__ import annotations

import hashlib
import json
from itertools import pairwise

import jsonschema
import pytest

from gateway.core.signing import verify_envelope
from gateway.model import Frame, OutgoingMessage
from gateway.sim.battery import LeafBattery
from tests.conftest import SCHEMA
from tests.pipelines import PipelineRig, memory_pipeline


def make(profile: str = "leaf-aze0", **policy: float) -> PipelineRig:
    return memory_pipeline(profile, **policy)


def kinds(msgs: list[OutgoingMessage]) -> list[str]:
    return [m.kind for m in msgs]


def test_first_reading_and_passport_as_soon_as_state_is_complete() -> None:
    rig = make(reading_interval_s=60)
    msgs = rig.run(LeafBattery(generation="aze0", soh_pct=80), 1.0)
    assert kinds(msgs)[:2] == ["reading", "passport"]
    assert msgs[1].retain and not msgs[0].retain
    assert msgs[1].body["ext"]["reason"] == "first"
    assert msgs[0].body["ts"] - 1e12 < 1000  # within the first second of data


def test_readings_follow_the_interval_in_measurement_time() -> None:
    rig = make(reading_interval_s=2)
    msgs = rig.run(LeafBattery(generation="aze0"), 10.0)
    times = [m.body["ts"] for m in msgs if m.kind == "reading"]
    assert len(times) == 5
    assert all(b - a == pytest.approx(2000, abs=10) for a, b in pairwise(times))


def test_reading_carries_contract_measurements() -> None:
    rig = make(reading_interval_s=1)
    battery = LeafBattery(generation="aze0", soh_pct=83, soc_pct=64.0, temp_c=25.0)
    reading = [m for m in rig.run(battery, 2.5) if m.kind == "reading"][-1]  # after a full 0x5C0 cycle
    m = reading.body["m"]
    assert m["bms_soh_pct"] == 83.0
    assert m["soc_pct"] == pytest.approx(64.0, abs=0.2)
    assert m["pack_a"] < 0  # the simulated car is driving: discharge is negative
    assert {"pack_v", "temp_c_min", "temp_c_max"} <= set(m)
    assert reading.body["kind"] == "reading" and reading.body["dev"] == "gw-t" and reading.body["v"] == 1


def test_passport_validates_against_idta_product_condition_schema() -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"{SCHEMA} not present")
    schema = json.loads(SCHEMA.read_text())
    rig = make()
    passports = [m for m in rig.run(LeafBattery(generation="aze0"), 3.0) if m.kind == "passport"]
    doc = passports[0].body["doc"]
    jsonschema.validate(doc, schema)
    assert doc["InformationOnAccidents"] == []
    assert "StateOfCertifiedEnergy" not in doc  # the BMS SOH is not SOCE
    assert passports[0].body["ext"]["bms_soh_pct"] == 85.0
    prov = passports[0].body["prov"]
    assert prov["StateOfCharge"]["signal"] == "0x55B LB_SOC"
    assert prov["ext.bms_soh_pct"]["src"] == "bms-reported"


def test_key_off_by_main_relay_publishes_a_passport() -> None:
    rig = make()
    battery = LeafBattery(generation="aze0")
    rig.run(battery, 1.0)
    from gateway.sim.battery import encode_1db

    off = Frame(1e9 + 1.5, 0x1DB, encode_1db(0.0, 370.0, counter=0, main_relay=False))
    msgs = rig.feed([off])
    assert kinds(msgs) == ["passport"] and msgs[0].body["ext"]["reason"] == "key-off"


def test_bus_silence_publishes_key_off_passport_and_stops_readings() -> None:
    rig = make(reading_interval_s=1, silence_s=3)
    rig.run(LeafBattery(generation="aze0"), 2.0)
    later = rig.tick(1e9 + 6.0)
    assert kinds(later) == ["passport"] and later[0].body["ext"]["reason"] == "key-off"
    assert rig.tick(1e9 + 20.0) == []  # asleep: no readings of stale values


def test_end_of_charge_passport() -> None:
    rig = make(charge_settle_s=2)
    charging = LeafBattery(generation="aze0", current=lambda t: 20.0 if t < 6 else 0.0)
    msgs = rig.run(charging, 10.0)
    reasons = [m.body["ext"]["reason"] for m in msgs if m.kind == "passport"]
    assert reasons == ["first", "end-of-charge"]


def test_soh_change_and_daily_and_requested_passports() -> None:
    rig = make(passport_interval_s=5, soh_change_pct=1)
    battery = LeafBattery(generation="aze0", soh_pct=85)
    rig.run(battery, 1.0)
    battery.soh_pct = 83
    msgs = rig.run(battery, 1.0, start=1e9 + 1)
    assert [m.body["ext"]["reason"] for m in msgs if m.kind == "passport"] == ["soh-change"]
    msgs = rig.run(battery, 5.0, start=1e9 + 2)
    assert "daily" in [m.body["ext"]["reason"] for m in msgs if m.kind == "passport"]
    rig.pipe.request_passport()
    msgs = rig.run(battery, 0.1, start=1e9 + 7.1)
    assert [m.body["ext"]["reason"] for m in msgs if m.kind == "passport"] == ["request"]


def test_state_is_saved_before_each_message_and_chain_is_continuous() -> None:
    rig = make(reading_interval_s=1)
    key_pub = rig.public_key
    msgs = rig.run(LeafBattery(generation="aze0"), 5.0)
    assert [s[1] for s in rig.sink.saves] == [m.seq for m in msgs] == list(range(1, len(msgs) + 1))
    prev = bytes(32)
    for m in msgs:
        body = verify_envelope(m.payload, key_pub)
        assert body["prev"] == prev
        prev = hashlib.sha256(m.payload).digest()


def test_bad_frames_are_counted_not_fatal() -> None:
    rig = make()
    rig.pipe.on_frame(Frame(1.0, 0x1DB, bytes(8)[:7] + b"\x01"))  # CRC wrong
    rig.pipe.on_frame(Frame(1.0, 0x1DB, b"\x00"))  # short
    rig.pipe.on_frame(Frame(1.0, 0x7FF, bytes(8)))  # not ours
    assert rig.pipe.counts["crc"] == 1 and rig.pipe.counts["length"] == 1 and rig.pipe.counts["ignored"] == 1


def test_finish_without_complete_state_gives_reading_only() -> None:
    rig = make("leaf-ze1")  # ZE1 broadcasts no pack temperature
    rig.run(LeafBattery(generation="ze1"), 0.5)
    assert kinds(rig.finish(1e9 + 0.5)) == ["reading"]


def test_readings_continue_when_the_clock_steps_back() -> None:
    # GIVEN readings every second WHEN the wall clock steps back an hour (NTP after a cold start)
    rig = make(reading_interval_s=1)
    battery = LeafBattery(generation="aze0")
    before = [m for m in rig.run(battery, 3.0) if m.kind == "reading"]
    after = [m for m in rig.run(battery, 3.0, start=1e9 - 3600) if m.kind == "reading"]
    # THEN readings go on at once, with the new time, and nothing integrates a negative interval
    assert len(before) >= 3 and len(after) >= 2
    assert after[0].body["ts"] < before[-1].body["ts"]
    assert rig.pipe.counts["clock_step_back"] == 1
    assert rig.tracker.counters.ah_discharged < 1.0


def test_batch_mode_keeps_one_sequence_number_per_reading_and_the_chain_intact() -> None:
    from gateway.core.chainverify import ChainVerifier
    from gateway.core.passport import expand_batch

    # GIVEN [publish] batch = 5 and a reading every second
    rig = make(reading_interval_s=1, batch=5)
    msgs = rig.run(LeafBattery(generation="aze0", soc_pct=60.0), 12.0)
    msgs += rig.finish(1e9 + 12.0)
    batches = [m for m in msgs if m.kind == "batch"]
    # THEN readings travel 5 to an envelope on the reading topic, a passport flushes a partial batch first
    assert batches and all(m.topic == "reading" for m in batches)
    assert [m.body["n"] for m in batches][1:-1] == [5] * (len(batches) - 2)
    kinds = [m.kind for m in msgs]
    assert kinds.index("passport") > 0 and kinds[kinds.index("passport") - 1] == "batch"
    readings = [r for m in batches for r in expand_batch(m.body)]
    assert readings[0]["m"]["soc_pct"] == pytest.approx(60.0, abs=0.01)
    assert len({r["seq"] for r in readings}) == len(readings)  # every reading keeps its (dev, ep, seq)
    verifier = ChainVerifier(lambda dev: rig.public_key)
    for m in msgs:
        assert verifier.add(m.payload).status == "accepted"
    lines, intact = verifier.report()
    assert intact and "none missing" in lines[0]
    assert rig.pipe.chain.seq == len(readings) + kinds.count("passport")


def test_thinned_readings_are_counted_in_the_next_passport() -> None:
    rig = make(passport_interval_s=2)
    rig.run(LeafBattery(generation="aze0"), 1.0)
    rig.sink.thinned = 37  # the outbox had to thin 37 readings
    passports = [m for m in rig.run(LeafBattery(generation="aze0"), 3.0, start=1e9 + 1) if m.kind == "passport"]
    assert passports[0].body["prov"]["outbox"]["thinned_readings"] == 37


def test_a_message_that_cannot_be_stored_is_not_sent_and_takes_no_sequence_number() -> None:
    rig = make(reading_interval_s=1)
    rig.run(LeafBattery(generation="aze0"), 1.5)
    seq = rig.pipe.chain.seq
    rig.sink.fail = True  # disk full
    assert [m for m in rig.run(LeafBattery(generation="aze0"), 2.0, start=1e9 + 1.5) if m.kind == "reading"] == []
    assert rig.pipe.chain.seq == seq and rig.pipe.counts["reading_not_stored"] >= 1
    rig.sink.fail = False
    nxt = [m for m in rig.run(LeafBattery(generation="aze0"), 1.5, start=1e9 + 3.5) if m.kind == "reading"]
    assert nxt[0].seq == seq + 1  # the chain goes on without a hole


def test_a_full_disk_keeps_a_batch_for_the_next_attempt() -> None:
    from gateway.core.passport import expand_batch

    # GIVEN batches of 3 readings WHEN the disk is full for a while
    rig = make(reading_interval_s=1, batch=3)
    rig.run(LeafBattery(generation="aze0"), 1.5)
    rig.sink.fail = True
    assert [m for m in rig.run(LeafBattery(generation="aze0"), 4.0, start=1e9 + 1.5) if m.kind == "batch"] == []
    rig.sink.fail = False
    # THEN the readings of the failed attempts go out with the next batch, none lost
    batch = next(m for m in rig.run(LeafBattery(generation="aze0"), 1.0, start=1e9 + 5.5) if m.kind == "batch")
    assert len(expand_batch(batch.body)) > 3 and rig.pipe.counts["batch_not_stored"] >= 1


def test_a_sink_that_takes_no_chain_position_leaves_the_chain_alone(caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN the inspection's kind of sink, which drops what it gets
    rig = make(reading_interval_s=1)
    rig.sink.put = lambda message, *, chain, counters: False  # type: ignore[method-assign]
    with caplog.at_level("INFO"):
        rig.run(LeafBattery(generation="aze0"), 3.0)
    # THEN nothing took a sequence number, the passport is not retried on every frame, and none is logged
    assert rig.pipe.chain.seq == 0 and rig.pipe.counts["reading"] == 0
    assert "passport update" not in caplog.text

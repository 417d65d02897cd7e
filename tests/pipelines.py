"""A real pipeline (real profile, DBC files, decoder, tracker and signing) whose messages go to a
``MemorySink``, for tests that look at what it signs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.app.wiring import load_profile
from gateway.core.battery import BatteryTracker
from gateway.core.config import PublishConfig, parse_config
from gateway.core.decoding import Decoder
from gateway.core.profile import Profile
from gateway.core.signing import Signer
from gateway.model import ChainPosition, Frame, OutgoingMessage
from gateway.services.pipeline import Pipeline
from gateway.sim.battery import LeafBattery
from tests.fakes import MemorySink


def publish_config(**values: Any) -> PublishConfig:
    """``[publish]`` with these values and the defaults, validated like a config file."""
    return parse_config({"publish": values}, sections=("publish",)).publish


@dataclass
class PipelineRig:
    pipe: Pipeline
    sink: MemorySink
    tracker: BatteryTracker
    profile: Profile
    public_key: ec.EllipticCurvePublicKey

    def feed(self, frames: Iterable[Frame]) -> list[OutgoingMessage]:
        """Feed frames; return what was signed meanwhile."""
        for frame in frames:
            self.pipe.on_frame(frame)
        return self.sink.take()

    def run(self, battery: LeafBattery, seconds: float, start: float = 1e9) -> list[OutgoingMessage]:
        return self.feed(battery.frames(seconds, start_ts=start))

    def tick(self, now: float) -> list[OutgoingMessage]:
        self.pipe.tick(now)
        return self.sink.take()

    def finish(self, now: float) -> list[OutgoingMessage]:
        self.pipe.finish(now)
        return self.sink.take()


def memory_pipeline(profile: str = "leaf-aze0", *, vin_salt: bytes = b"", charge_settle_s: float = 10.0,
                    **publish: Any) -> PipelineRig:
    p, dbs = load_profile(profile)
    key = ec.generate_private_key(ec.SECP256R1())
    sink = MemorySink()
    tracker = BatteryTracker(p)
    pipe = Pipeline(Decoder(p, dbs), tracker, signer=Signer(key), sink=sink, chain=ChainPosition(),
                    policy=publish_config(**publish), device_id="gw-t", sw="t", vin_salt=vin_salt,
                    charge_settle_s=charge_settle_s)
    return PipelineRig(pipe, sink, tracker, p, key.public_key())

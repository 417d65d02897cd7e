"""Fakes of our own ports, for pure unit tests."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.errors import StateError
from gateway.model import ChainPosition, Counters, OutgoingMessage


class MemorySink:
    """``MessageSink`` in memory: records every message with the chain position it took."""

    def __init__(self) -> None:
        self.saves: list[tuple[int, int, bytes]] = []
        self.counters: dict[str, object] = {}
        self.messages: list[OutgoingMessage] = []
        self.fail = False  # a full disk
        self.thinned = 0  # readings the outbox thinned since the last passport
        self._taken = 0

    def put(self, message: OutgoingMessage, *, chain: ChainPosition, counters: Counters) -> bool:
        if self.fail:
            raise StateError("device.state_dir: disk full")
        self.saves.append((chain.ep, chain.seq, chain.prev))
        self.counters = counters.to_dict()
        self.messages.append(message)
        return True

    def take_thinned(self) -> int:
        n, self.thinned = self.thinned, 0
        return n

    def take(self) -> list[OutgoingMessage]:
        """The messages put since the last ``take``."""
        new, self._taken = self.messages[self._taken:], len(self.messages)
        return new


class MemoryReleases:
    """``ReleaseStore`` in memory; ``log`` records installs, switches and state saves in order."""

    def __init__(self, current: str | None = "1.0.0") -> None:
        from gateway.model import OtaState

        self.installed = {current} if current else set()
        self._current = current
        self.state = OtaState()
        self.log: list[str] = []

    def current(self) -> str | None:
        return self._current

    def install(self, bundle: str, version: str) -> None:
        self.installed.add(version)
        self.log.append(f"install {version}")

    def switch(self, version: str) -> None:
        assert version in self.installed
        self._current = version
        self.log.append(f"switch {version}")

    def prune(self, keep: set[str]) -> None:
        self.installed &= keep | {self._current}

    def load_state(self) -> object:
        return self.state

    def save_state(self, state: object) -> None:
        self.state = state  # type: ignore[assignment]
        self.log.append("save " + ("probation" if state.probation else "no-probation"))  # type: ignore[attr-defined]


class StaticUpdateClient:
    """``UpdateClient`` offering one release (or raising the error it is given)."""

    def __init__(self, release: object, error: Exception | None = None) -> None:
        self.release, self.error, self.downloads = release, error, 0

    def check(self, target: str) -> object:
        if self.error is not None:
            raise self.error
        return self.release

    def download(self, release: object) -> str:
        self.downloads += 1
        return "/bundle.tar"


class FixedSegmentModel:
    """``SegmentModel`` that answers the same correction for every segment and records the features."""

    name = "fixed-test"

    def __init__(self, mu_pct: float, sigma_pct: float, shared: float = 0.0) -> None:
        self.answer = (mu_pct, sigma_pct)
        self.shared = shared
        self.calls: list[list[float]] = []

    def predict(self, features: Sequence[float]) -> tuple[float, float]:
        self.calls.append(list(features))
        return self.answer

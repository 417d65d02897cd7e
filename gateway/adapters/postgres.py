"""The ingest's PostgreSQL store (psycopg 3): the schema and its migrations, one transaction per batch,
and the reads ``ingest --check`` needs.

Idempotent by construction: ``messages`` and ``readings`` are keyed by ``(dev, ep, seq)`` and every
insert is ``ON CONFLICT DO NOTHING``, so a batch delivered again (a worker died before its
acknowledgement reached the engine) stores nothing twice; a different envelope for a key already stored
is a conflict, kept in ``rejections``. Several workers write at once: PostgreSQL's row locks order two
inserts of the same key, the second sees the first's commit.

Only the ingest imports this module (psycopg is in the ``ingest`` extra, never on a device).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import psycopg

from ..errors import StoreError
from ..model import Received, StoreResult

__all__ = ["MIGRATIONS_LOCK", "PostgresStore"]

log = logging.getLogger(__name__)

MIGRATIONS_LOCK = 0x6267770001  # pg_advisory_xact_lock key: workers starting together migrate once


def _json(value: Any) -> str:
    """Payload -> JSON for a jsonb column: byte strings (prev, hashes) as hex."""
    return json.dumps(value, separators=(",", ":"), default=lambda v: v.hex() if isinstance(v, bytes) else str(v))


def _time(ms: Any) -> datetime:
    return datetime.fromtimestamp(ms / 1000 if isinstance(ms, int | float) else 0, tz=UTC)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration shipped, in order."""
    files = resources.files("gateway.adapters.pg_migrations")
    out = [(int(f.name[:4]), f.name, f.read_text("utf-8")) for f in files.iterdir()
           if f.name.endswith(".sql") and f.name[:4].isdigit()]
    return sorted(out)


class PostgresStore:
    """A connection to the ingest database; reconnects on the next batch after a failure."""

    def __init__(self, dsn: str, *, connect_timeout_s: int = 10) -> None:
        self._dsn, self._timeout = dsn, connect_timeout_s
        self._db: psycopg.Connection[Any] | None = None

    def _conn(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            try:
                self._db = psycopg.connect(self._dsn, connect_timeout=self._timeout,
                                           application_name="battery-gateway ingest", autocommit=True)
            except psycopg.Error as exc:
                raise StoreError(f"ingest: cannot connect to the database: {_first_line(exc)}") from exc
        return self._db

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet, each in its own transaction, under an advisory lock so
        workers that start together migrate once. Returns the names applied.

        Raises:
            StoreError: the database refused a migration (that one was rolled back).
        """
        applied = []
        db = self._conn()
        try:
            for version, name, sql in migrations():
                with db.transaction():
                    db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATIONS_LOCK,))
                    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                               "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
                    if db.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (version,)).fetchone():
                        continue
                    db.execute(sql.encode())
                    db.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                    applied.append(name)
        except psycopg.Error as exc:
            raise StoreError(f"ingest: migration failed: {_first_line(exc)}") from exc
        return applied

    def store(self, batch: list[Received]) -> StoreResult:
        """One transaction: see the module docstring.

        Raises:
            StoreError: nothing of the batch was committed.
        """
        try:
            db = self._conn()
            with db.transaction(), db.cursor() as cur:
                return self._store(cur, batch)
        except psycopg.Error as exc:
            raise StoreError(f"ingest: the database did not take a batch of {len(batch)}: "
                             f"{_first_line(exc)}") from exc

    def _store(self, cur: psycopg.Cursor[Any], batch: list[Received]) -> StoreResult:
        result = StoreResult()
        rejections = [(r.topic, r.dev, r.reason, r.envelope) for r in batch if r.checked is None]
        accepted = [r for r in batch if r.checked is not None]
        inserted: set[tuple[str, int, int]] = set()
        if accepted:
            cur.executemany(
                "INSERT INTO messages (dev, ep, seq, n, kind, ts, prev, digest, envelope, topic) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING dev, ep, seq",
                [(c.dev, c.ep, c.seq, c.n, c.kind, _time(c.payload.get("ts")), c.prev, c.digest, r.envelope, r.topic)
                 for r in accepted if (c := r.checked)], returning=True)
            while True:
                inserted.update(cur.fetchall())
                if not cur.nextset():
                    break
        fresh, again = [], []
        for r in accepted:
            c = r.checked
            assert c is not None
            if (c.dev, c.ep, c.seq) in inserted:
                inserted.discard((c.dev, c.ep, c.seq))  # the same envelope twice in one batch: the 2nd is again
                fresh.append(r)
            else:
                again.append(r)
        if again:
            keys = list({(r.checked.dev, r.checked.ep, r.checked.seq) for r in again if r.checked})
            cur.execute("SELECT dev, ep, seq, digest FROM messages WHERE (dev, ep, seq) IN "
                        "(SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[]))",
                        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]))
            stored = {(d, e, s): bytes(h) for d, e, s, h in cur.fetchall()}
            for r in again:
                c = r.checked
                assert c is not None
                if stored.get((c.dev, c.ep, c.seq)) == c.digest:
                    result.duplicates += 1
                else:
                    reason = f"{c.name} already stored with different content: conflict"
                    rejections.append((r.topic, c.dev, reason, r.envelope))
                    result.problems.append(f"{r.topic}: REJECTED: {reason}")
        rows = [(r.checked.dev, r.checked.ep, seq, _time(ts), r.checked.payload.get("bat"), _json(m), r.checked.digest)
                for r in fresh if r.checked for seq, ts, m in r.readings]
        if rows:
            cur.executemany("INSERT INTO readings (dev, ep, seq, ts, bat, m, digest) VALUES "
                            "(%s, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING RETURNING 1", rows,
                            returning=True)
            written = 0
            while True:
                written += len(cur.fetchall())
                if not cur.nextset():
                    break
            if written < len(rows):  # a batch overlapping sequence numbers another envelope holds
                result.problems.append(f"{len(rows) - written} readings overlap sequence numbers already stored "
                                       "from other envelopes: conflict (ingest --check lists the device)")
        passports = [(c.payload.get("bat") or c.dev, c.dev, c.ep, c.seq, _time(c.payload.get("ts")),
                      _json(c.payload), r.envelope)
                     for r in fresh if (c := r.checked) and c.kind == "passport"]
        if passports:
            cur.executemany(
                "INSERT INTO passports AS p (battery, dev, ep, seq, ts, payload, envelope) "
                "VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT (battery) DO UPDATE SET "
                "dev = EXCLUDED.dev, ep = EXCLUDED.ep, seq = EXCLUDED.seq, ts = EXCLUDED.ts, "
                "payload = EXCLUDED.payload, envelope = EXCLUDED.envelope "
                "WHERE (p.ts, p.ep, p.seq) < (EXCLUDED.ts, EXCLUDED.ep, EXCLUDED.seq)", passports)
        chains: dict[tuple[str, int], list[Any]] = {}
        for r in fresh:
            c = r.checked
            assert c is not None
            state = chains.setdefault((c.dev, c.ep), [0, 0, _time(0)])
            state[0] += c.n
            state[1] = max(state[1], c.seq + c.n - 1)
            state[2] = max(state[2], _time(c.payload.get("ts")))
        if chains:
            cur.executemany(
                "INSERT INTO chain_state AS s (dev, ep, received, max_seq, last_ts) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (dev, ep) DO UPDATE SET received = s.received + EXCLUDED.received, "
                "max_seq = GREATEST(s.max_seq, EXCLUDED.max_seq), last_ts = GREATEST(s.last_ts, EXCLUDED.last_ts), "
                "updated_at = now()",
                sorted((d, e, *v) for (d, e), v in chains.items()))  # one lock order: no deadlock between workers
        if rejections:
            cur.executemany(
                "INSERT INTO rejections (digest, topic, dev, reason, envelope) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (digest) DO NOTHING",
                [(hashlib.sha256(t.encode() + b"\0" + e).digest(), t, d, reason, e) for t, d, reason, e in rejections])
        result.stored, result.rejected = len(fresh), len(rejections)
        return result

    def chains(self) -> Iterator[tuple[str, int, list[tuple[int, int, bytes, bytes]]]]:
        """Every device's epochs, in order: (dev, ep, [(seq, n, prev, digest)...]) streamed from a
        server-side cursor, for ``ingest --check``.

        Raises:
            StoreError: the database cannot be read.
        """
        try:
            db = self._conn()
            with db.transaction(), db.cursor(name="bgw_check") as cur:
                cur.itersize = 5000
                cur.execute("SELECT dev, ep, seq, n, prev, digest FROM messages ORDER BY dev, ep, seq")
                key: tuple[str, int] | None = None
                rows: list[tuple[int, int, bytes, bytes]] = []
                for dev, ep, seq, n, prev, digest in cur:
                    if (dev, ep) != key:
                        if key is not None:
                            yield key[0], key[1], rows
                        key, rows = (dev, ep), []
                    rows.append((seq, n, bytes(prev), bytes(digest)))
                if key is not None:
                    yield key[0], key[1], rows
        except psycopg.Error as exc:
            raise StoreError(f"ingest --check: cannot read the database: {_first_line(exc)}") from exc

    def rejection_counts(self) -> list[tuple[str | None, int, str]]:
        """(claimed device, count, one reason) of the rejections, most first."""
        try:
            db = self._conn()
            with db.transaction():
                return [(d, int(n), reason) for d, n, reason in db.execute(
                    "SELECT dev, count(*), min(reason) FROM rejections GROUP BY dev ORDER BY count(*) DESC, dev")]
        except psycopg.Error as exc:
            raise StoreError(f"ingest --check: cannot read the database: {_first_line(exc)}") from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

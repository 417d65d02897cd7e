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
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import psycopg

from ..errors import StoreError
from ..model import MAX_BATCH, Checked, Received, StoreResult

__all__ = ["MIGRATIONS_LOCK", "PostgresStore"]

MIGRATIONS_LOCK = 0x6267770001  # pg_advisory_xact_lock key: workers starting together migrate once


def _json(value: Any) -> str:
    """Payload -> JSON for a jsonb column: byte strings (prev, hashes) as hex. No NaN (jsonb has none):
    ValueError, a refused value."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False,
                      default=lambda v: v.hex() if isinstance(v, bytes) else str(v))


def _time(ms: int) -> datetime:
    """Milliseconds since the epoch (checked in range by the verifier) -> an aware datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


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
            StoreError: nothing of the batch was committed; ``refused_data`` when the database refused a
                value the batch holds (sending it again cannot help), else it was unreachable or busy.
        """
        try:
            db = self._conn()
            with db.transaction(), db.cursor() as cur:
                return self._store(cur, batch)
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, psycopg.NotSupportedError,
                ValueError, TypeError) as exc:
            raise StoreError(f"ingest: the database refused a batch of {len(batch)}: {_first_line(exc)}",
                             refused_data=True) from exc
        except psycopg.Error as exc:
            raise StoreError(f"ingest: the database did not take a batch of {len(batch)}: "
                             f"{_first_line(exc)}") from exc

    def _store(self, cur: psycopg.Cursor[Any], batch: list[Received]) -> StoreResult:
        result = StoreResult()
        rejections = [(r.topic, r.dev, r.reason, r.envelope, False) for r in batch if r.checked is None]
        # one order for every worker's row locks (no deadlock between two batches that share devices)
        accepted = sorted(((r, r.checked) for r in batch if r.checked is not None),
                          key=lambda rc: (rc[1].dev, rc[1].ep, rc[1].seq))

        def conflict(r: Received, c: Checked, why: str) -> None:
            reason = f"{c.name} {why}: conflict"
            rejections.append((r.topic, c.dev, reason, r.envelope, True))
            result.problems.append((r.topic, reason))

        overlapping = self._overlapping(cur, [c for _, c in accepted])
        for k in sorted(overlapping):
            conflict(*accepted[k], "overlaps sequence numbers stored from another envelope")
        accepted = [rc for k, rc in enumerate(accepted) if k not in overlapping]
        inserted: set[tuple[str, int, int]] = set()
        if accepted:
            cur.executemany(
                "INSERT INTO messages (dev, ep, seq, n, kind, ts, prev, digest, envelope, topic) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING dev, ep, seq",
                [(c.dev, c.ep, c.seq, c.n, c.kind, _time(c.payload["ts"]), c.prev, c.digest, r.envelope, r.topic)
                 for r, c in accepted], returning=True)
            while True:
                inserted.update(cur.fetchall())
                if not cur.nextset():
                    break
        fresh, again = [], []
        for r, c in accepted:
            if (c.dev, c.ep, c.seq) in inserted:
                inserted.discard((c.dev, c.ep, c.seq))  # the same envelope twice in one batch: the 2nd is again
                fresh.append((r, c))
            else:
                again.append((r, c))
        if again:
            keys = list({(c.dev, c.ep, c.seq) for _, c in again})
            cur.execute("SELECT dev, ep, seq, digest FROM messages WHERE (dev, ep, seq) IN "
                        "(SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[]))",
                        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]))
            stored = {(d, e, s): bytes(h) for d, e, s, h in cur.fetchall()}
            for r, c in again:
                if stored.get((c.dev, c.ep, c.seq)) == c.digest:
                    result.duplicates += 1
                else:  # another worker stored a different envelope at this position meanwhile
                    conflict(r, c, "already stored with different content")
        rows = [(c.dev, c.ep, seq, _time(ts), c.payload.get("bat"), _json(m), c.digest)
                for r, c in fresh for seq, ts, m in r.readings]
        if rows:
            cur.executemany("INSERT INTO readings (dev, ep, seq, ts, bat, m, digest) VALUES "
                            "(%s, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING", rows)
        # the latest passport per battery: the same device's later (ep, seq) replaces it; another device's
        # when it is later, a time in the future counting as its arrival (a device cannot pin a pack's row)
        passports = sorted(((c.payload.get("bat") or c.dev, c.payload.get("bat") is not None, c.dev, c.ep, c.seq,
                             _time(c.payload["ts"]), _json(c.payload), r.envelope)
                            for r, c in fresh if c.kind == "passport"), key=lambda p: p[:5])
        if passports:
            cur.executemany(
                "INSERT INTO passports AS p (battery, named, dev, ep, seq, ts, payload, envelope) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT (battery, named) DO UPDATE SET "
                "dev = EXCLUDED.dev, ep = EXCLUDED.ep, seq = EXCLUDED.seq, ts = EXCLUDED.ts, "
                "payload = EXCLUDED.payload, envelope = EXCLUDED.envelope, received_at = now() "
                "WHERE (p.dev = EXCLUDED.dev AND (p.ep, p.seq) < (EXCLUDED.ep, EXCLUDED.seq)) "
                "OR (p.dev <> EXCLUDED.dev AND LEAST(p.ts, p.received_at) < LEAST(EXCLUDED.ts, now()))",
                passports)
        chains: dict[tuple[str, int], list[Any]] = {}
        for _, c in fresh:
            state = chains.setdefault((c.dev, c.ep), [0, 0, _time(0)])
            state[0] += c.n
            state[1] = max(state[1], c.seq + c.n - 1)
            state[2] = max(state[2], _time(c.payload["ts"]))
        if chains:
            cur.executemany(
                "INSERT INTO chain_state AS s (dev, ep, received, max_seq, last_ts) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (dev, ep) DO UPDATE SET received = s.received + EXCLUDED.received, "
                "max_seq = GREATEST(s.max_seq, EXCLUDED.max_seq), last_ts = GREATEST(s.last_ts, EXCLUDED.last_ts), "
                "updated_at = now()",
                sorted((d, e, *v) for (d, e), v in chains.items()))
        if rejections:
            cur.executemany(
                "INSERT INTO rejections (digest, topic, dev, reason, conflict, envelope) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (digest) DO NOTHING",
                [(hashlib.sha256(t.encode() + b"\0" + e).digest(), t, d, reason, is_conflict, e)
                 for t, d, reason, e, is_conflict in rejections])
        result.stored, result.rejected = len(fresh), len(rejections)
        return result

    @staticmethod
    def _overlapping(cur: psycopg.Cursor[Any], accepted: list[Checked]) -> set[int]:
        """Indexes of the envelopes whose sequence numbers an already stored, different envelope of the same
        device and epoch covers (a batch's range included): conflicts, never stored. Two such envelopes in
        one batch, or in two workers' batches at once, are left to ``ingest --check``."""
        if not accepted:
            return set()
        cur.execute(
            "SELECT f.i FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bytea[]) "
            "WITH ORDINALITY AS f(dev, ep, lo, hi, digest, i) WHERE EXISTS (SELECT 1 FROM messages m "
            "WHERE m.dev = f.dev AND m.ep = f.ep AND m.seq BETWEEN f.lo - %s AND f.hi "
            "AND m.seq + m.n - 1 >= f.lo AND m.digest <> f.digest)",
            ([c.dev for c in accepted], [c.ep for c in accepted], [c.seq for c in accepted],
             [c.seq + c.n - 1 for c in accepted], [c.digest for c in accepted], MAX_BATCH))
        return {int(i) - 1 for (i,) in cur.fetchall()}

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

    def rejection_counts(self) -> list[tuple[str | None, int, int, str]]:
        """(claimed device, rejections, of which conflicts, one reason) per device, most first."""
        try:
            db = self._conn()
            with db.transaction():
                return [(d, int(n), int(c), reason) for d, n, c, reason in db.execute(
                    "SELECT dev, count(*), count(*) FILTER (WHERE conflict), min(reason) FROM rejections "
                    "GROUP BY dev ORDER BY count(*) DESC, dev")]
        except psycopg.Error as exc:
            raise StoreError(f"ingest --check: cannot read the database: {_first_line(exc)}") from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

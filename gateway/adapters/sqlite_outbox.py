"""The device's durable state in one SQLite database (WAL): chain position, counters, and the outbox of
signed messages waiting for their PUBACK. Implements ``MessageSink`` (the pipeline's way out) and
``Outbox`` (the forwarder's side).

Invariants:
- A message is written in the same transaction as the chain position it took, and ``(ep, seq)`` is
  UNIQUE: a crash at any moment leaves either both or neither, so the same ``(dev, ep, seq)`` can never
  carry two different messages, and a restart continues the chain.
- Rows leave only by ``delete`` (after a successful PUBACK) or by thinning. Thinning touches only
  readings, single or batched, oldest first, keeping one row per time bucket; passports and
  certificates are never dropped. A batch row counts as the readings it carries.
- An older schema is upgraded in place; only a damaged or unknown one starts a new epoch.
  What was thinned is counted until the next passport takes the count (``take_thinned``).
- ``synchronous=FULL``: a committed message survives power loss.
- A corrupt or unreadable database is moved aside (``state.db.corrupt``) and a new epoch starts,
  ``ep`` + 1 from the separate ``epoch`` file, with ``new_epoch_reason`` set.
- One process per directory (``flock`` on ``lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from pathlib import Path

from ..errors import StateError
from ..model import ChainPosition, Counters, OutboxRow, OutgoingMessage
from .fs import safe_dir, write_atomic

__all__ = ["SqliteOutbox"]

log = logging.getLogger(__name__)

_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chain (id INTEGER PRIMARY KEY CHECK (id = 1), ep INTEGER NOT NULL,
    seq INTEGER NOT NULL, prev BLOB NOT NULL, counters TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, ep INTEGER NOT NULL,
    seq INTEGER NOT NULL, kind TEXT NOT NULL, topic TEXT NOT NULL, retain INTEGER NOT NULL,
    ts INTEGER NOT NULL, payload BLOB NOT NULL, readings INTEGER NOT NULL DEFAULT 1, UNIQUE (ep, seq));
"""
# version -> the statements that bring a database of that version to the next one
_MIGRATIONS = {1: "ALTER TABLE outbox ADD COLUMN readings INTEGER NOT NULL DEFAULT 1"}
_THINNABLE = ("reading", "batch")  # passports and certificates are never thinned


def _int_ts(value: object) -> int:
    return value if isinstance(value, int) else 0


class SqliteOutbox:
    """State and outbox in ``state_dir/state.db``."""

    def __init__(self, state_dir: str | Path, *, max_bytes: int = 64 * 1024 * 1024,
                 thin_bucket_s: float = 600.0) -> None:
        """Open (or create) the database.

        Args:
            max_bytes: cap on the pages in use; above it readings are thinned.
            thin_bucket_s: the first thinning keeps one reading per this many seconds; each further round
                doubles it.

        Raises:
            StateError: the directory cannot be used, or another process holds it.
        """
        self.dir = Path(state_dir)
        self.path = self.dir / "state.db"
        self.epoch_path = self.dir / "epoch"
        self.max_bytes, self.thin_bucket_s = max_bytes, thin_bucket_s
        self.new_epoch_reason = ""
        try:
            safe_dir(self.dir)
        except OSError as exc:
            raise StateError(f"device.state_dir: cannot use {self.dir}: {exc.strerror}") from exc
        self._lock = self._take_lock()
        self._db: sqlite3.Connection | None = None
        self._saved_epoch = self._last_epoch()

    # -- opening ---------------------------------------------------------------------------------
    def _take_lock(self) -> int:
        path = self.dir / "lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"device.state_dir: cannot create {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateError(f"device.state_dir: {self.dir} is in use by another battery-gateway process "
                             "(stop the daemon first: systemctl stop battery-gateway)") from None
        return fd

    def _connect(self) -> sqlite3.Connection:
        # 0600 whatever the umask; SQLite gives its -wal and -shm files the database file's mode
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise StateError(f"device.state_dir: cannot open {self.path}: {exc.strerror}") from exc
        db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new database
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(_SCHEMA)
        return db

    def load(self) -> tuple[ChainPosition, Counters]:
        """The saved chain and counters; a new epoch (``new_epoch_reason`` set) when they were lost."""
        existed = self.path.exists()
        try:
            self._db = self._connect()
            self._migrate(self._meta("version"))
            row = self._db.execute("SELECT ep, seq, prev, counters FROM chain WHERE id = 1").fetchone()
            if row is not None:
                chain = ChainPosition(int(row[0]), int(row[1]), bytes(row[2]))
                if chain.ep < 1 or chain.seq < 0 or len(chain.prev) != 32:
                    raise ValueError("chain position out of range")
                return chain, Counters.from_dict(json.loads(row[3]))
            if not existed and self._last_epoch() is not None:
                self.new_epoch_reason = f"{self.path} was missing"
            elif self._last_epoch() is None:
                return ChainPosition(), Counters()  # first start of this device
            else:
                self.new_epoch_reason = f"{self.path} held no chain position"
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError) as exc:
            self.new_epoch_reason = f"{self.path} was unreadable ({exc})"
            self._move_aside()
        chain = ChainPosition(ep=(self._last_epoch() or 1) + 1)
        log.error("state lost: %s; starting epoch %d, counters restart from zero", self.new_epoch_reason, chain.ep)
        self._save_epoch(chain.ep)
        return chain, Counters()

    def _migrate(self, version: str | None) -> None:
        """Bring an older database to ``_SCHEMA_VERSION`` in place (an update must not cost the chain).

        Raises:
            ValueError: a version this release does not know (a newer one: the database is kept aside).
        """
        if version is None:
            self._set_meta("version", str(_SCHEMA_VERSION))
            return
        if not version.isdigit() or not 1 <= int(version) <= _SCHEMA_VERSION:
            raise ValueError(f"schema version {version}, expected {_SCHEMA_VERSION} or older")
        for v in range(int(version), _SCHEMA_VERSION):
            self._conn().execute(_MIGRATIONS[v])
            self._set_meta("version", str(v + 1))
            log.info("state database upgraded from schema %d to %d", v, v + 1)

    def _move_aside(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.replace(f"{self.path}{suffix}", f"{self.path}.corrupt{suffix}")
        try:
            self._db = self._connect()
            self._set_meta("version", str(_SCHEMA_VERSION))
        except sqlite3.Error as exc:
            raise StateError(f"device.state_dir: cannot create {self.path}: {exc}") from exc

    # -- small files and meta --------------------------------------------------------------------
    def _last_epoch(self) -> int | None:
        try:
            return int(self.epoch_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _save_epoch(self, ep: int) -> None:
        try:
            write_atomic(self.epoch_path, f"{ep}\n".encode())
            self._saved_epoch = ep
        except OSError as exc:
            raise StateError(f"device.state_dir: cannot write {self.epoch_path}: {exc.strerror}") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("SqliteOutbox.load() first")
        return self._db

    def _meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._conn().execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))

    # -- MessageSink -----------------------------------------------------------------------------
    def put(self, message: OutgoingMessage, *, chain: ChainPosition, counters: Counters) -> bool:
        """Store ``message`` with the chain position it took and the counters, in one transaction.

        Returns:
            True (a stored message always takes its position).

        Raises:
            StateError: disk full even after thinning, read-only file system, I/O error.
        """
        self.save(chain, counters, message)
        return True

    def save(self, chain: ChainPosition, counters: Counters, message: OutgoingMessage | None = None) -> None:
        """Persist the chain position and counters (at shutdown), and the message that took that
        position when there is one, atomically.

        Raises:
            StateError: disk full even after thinning, read-only file system, I/O error.
        """
        if self._saved_epoch != chain.ep:
            self._save_epoch(chain.ep)
        if message is None and self._ahead_of(chain):
            log.error("state not saved: the stored chain position is ahead of epoch %d seq %d", chain.ep, chain.seq)
            return
        for attempt in (1, 2):
            try:
                self._write(chain, counters, message)
                break
            except sqlite3.OperationalError as exc:
                full = "full" in str(exc)
                if attempt == 2 or not full or not self.thin(force=True):
                    raise StateError(f"device.state_dir: cannot write {self.path}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StateError(f"device.state_dir: cannot write {self.path}: {exc}") from exc
        if message is not None:
            try:
                if self.used_bytes() > self.max_bytes:
                    self.thin()
            except sqlite3.Error as exc:  # the message is stored: thinning is tried again with the next one
                log.error("outbox thinning failed: %s", exc)

    def _ahead_of(self, chain: ChainPosition) -> bool:
        """True when the stored position is past ``chain`` in the same epoch (saving would move it back)."""
        try:
            row = self._conn().execute("SELECT ep, seq FROM chain WHERE id = 1").fetchone()
        except sqlite3.Error:
            return False
        return row is not None and int(row[0]) == chain.ep and int(row[1]) > chain.seq

    def _write(self, chain: ChainPosition, counters: Counters, message: OutgoingMessage | None) -> None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR REPLACE INTO chain (id, ep, seq, prev, counters) VALUES (1, ?, ?, ?, ?)",
                       (chain.ep, chain.seq, chain.prev, json.dumps(counters.to_dict(), separators=(",", ":"))))
            if message is not None:
                db.execute("INSERT INTO outbox (ep, seq, kind, topic, retain, ts, payload, readings) "
                           "VALUES (?,?,?,?,?,?,?,?)",
                           (message.ep, message.seq, message.kind, message.topic, int(message.retain),
                            _int_ts(message.body.get("ts")), message.payload, message.readings))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def take_thinned(self) -> int:
        """Readings thinned since the last call (for the next passport's provenance)."""
        n = int(self._meta("thinned") or 0)
        if n:
            with contextlib.suppress(sqlite3.Error):
                self._set_meta("thinned", "0")
        return n

    # -- Outbox ----------------------------------------------------------------------------------
    def oldest(self, limit: int, *, exclude: set[int] | None = None) -> list[OutboxRow]:
        """Up to ``limit`` rows, oldest first, skipping the ids in ``exclude`` (in flight)."""
        exclude = exclude or set()
        rows = self._conn().execute(
            "SELECT id, ep, seq, kind, topic, retain, payload, readings FROM outbox ORDER BY id LIMIT ?",
            (limit + len(exclude),)).fetchall()
        out = [OutboxRow(r[0], OutgoingMessage(topic=r[4], payload=bytes(r[6]), retain=bool(r[5]), kind=r[3],
                                               seq=r[2], ep=r[1], readings=r[7]))
               for r in rows if r[0] not in exclude]
        return out[:limit]

    def delete(self, ids: list[int]) -> None:
        """Remove acknowledged rows."""
        if ids:
            db = self._conn()
            with contextlib.suppress(sqlite3.OperationalError):  # a full disk must not stop deletes
                db.execute("BEGIN IMMEDIATE")  # one transaction (one fsync) for the whole batch of acks
                try:
                    db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
                finally:
                    db.execute("COMMIT")

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def used_bytes(self) -> int:
        """Bytes in pages that hold data (free pages are reused, so this is what the cap limits)."""
        db = self._conn()
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * int(db.execute("PRAGMA page_size").fetchone()[0])

    def thin(self, *, force: bool = False) -> int:
        """Delete readings, oldest first, keeping one per bucket, doubling the bucket until under the cap.

        Returns:
            How many readings were deleted (also added to the count ``take_thinned`` returns).
        """
        db = self._conn()
        deleted, bucket_ms = 0, int(self.thin_bucket_s * 1000)
        while force or self.used_bytes() > self.max_bytes:
            rows = db.execute(f"SELECT id, ts, readings FROM outbox WHERE kind IN {_THINNABLE} ORDER BY id").fetchall()
            kept: set[int] = set()
            drop = []
            for row_id, ts, readings in rows:
                if ts // bucket_ms in kept:
                    drop.append((row_id, readings))
                else:
                    kept.add(ts // bucket_ms)
            if not drop:
                if bucket_ms > 365 * 86400 * 1000:
                    break  # only passports, certificates and one reading per year left
                bucket_ms *= 2
                continue
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i, _ in drop])
            db.execute("COMMIT")
            deleted += sum(n for _, n in drop)
            bucket_ms *= 2
            force = False
        if deleted:
            self._set_meta("thinned", str(int(self._meta("thinned") or 0) + deleted))
            log.warning("outbox over %d bytes: thinned %d readings (kept one per %d s); passports kept",
                        self.max_bytes, deleted, bucket_ms // 2000)
        return deleted

    def close(self) -> None:
        """Close the database and release the directory lock."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

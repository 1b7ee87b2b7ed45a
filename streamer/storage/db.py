"""The embedded SQLite database beside the media files: schema migrations and one writer thread.

Every write runs on one thread, in order, each call one transaction: a crash (SIGKILL included)
leaves the last committed state, never half a write (SQLite's WAL journal). The event loop only
queues work: `call` waits for the answer, `submit` queues a write and returns at once (job progress
and per-frame results, written at most a few times a second).

Media stays on disk under generated names; rows name it relative to the data dir.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("fmu.db")
T = TypeVar("T")
DB_NAME = "fmu.sqlite3"

# Each entry moves the schema one version up; never edit a released one, append a new one.
MIGRATIONS: list[str] = [
    # 1: items (clips and images), their objects, per-frame results, tracking jobs
    """
    CREATE TABLE items (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('clip', 'image')),
        filename TEXT NOT NULL,
        media TEXT NOT NULL,            -- relative to the data dir
        info TEXT NOT NULL,             -- JSON: what the mode read from the file at upload
        bytes INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        used REAL NOT NULL,             -- last opened or changed: retention goes oldest first
        owner TEXT                      -- who uploaded it, where owners are known
    );
    CREATE INDEX items_kind_created ON items (kind, created);
    CREATE TABLE objects (
        item_id TEXT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
        oid INTEGER NOT NULL,
        source TEXT NOT NULL,
        label TEXT NOT NULL,
        description TEXT,
        verdict TEXT,
        iou REAL,
        attempts INTEGER,
        history TEXT NOT NULL DEFAULT '[]',   -- JSON chat turns
        prompts TEXT NOT NULL DEFAULT '{}',   -- JSON: per frame, points, labels, box
        PRIMARY KEY (item_id, oid)
    );
    CREATE TABLE results (
        item_id TEXT NOT NULL,
        oid INTEGER NOT NULL,
        frame INTEGER NOT NULL,
        rle TEXT NOT NULL,              -- JSON COCO RLE {size, counts}
        box TEXT,                       -- JSON [x0, y0, x1, y1] or NULL
        score REAL NOT NULL,
        present INTEGER NOT NULL,
        PRIMARY KEY (item_id, oid, frame),
        FOREIGN KEY (item_id, oid) REFERENCES objects (item_id, oid) ON DELETE CASCADE
    );
    CREATE TABLE jobs (
        item_id TEXT NOT NULL,
        oid INTEGER NOT NULL,
        job_id TEXT NOT NULL,
        state TEXT NOT NULL,            -- queued | running | done | failed | cancelled | interrupted
        phase TEXT NOT NULL,            -- queued | forward | backward
        position INTEGER,               -- last frame committed in that phase
        done INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        updated REAL NOT NULL,
        PRIMARY KEY (item_id, oid),
        FOREIGN KEY (item_id, oid) REFERENCES objects (item_id, oid) ON DELETE CASCADE
    );
    """,
    # 2: the verdict's note (why a description was not checked), shown again on reopening
    "ALTER TABLE objects ADD COLUMN note TEXT;",
    # 3: a Find's check of its object (a rejected candidate kept stays flagged), and the id an
    # item's next object gets (ids are never given out twice, across restarts too)
    """
    ALTER TABLE objects ADD COLUMN find_check TEXT;
    ALTER TABLE items ADD COLUMN next_oid INTEGER NOT NULL DEFAULT 1;
    UPDATE items SET next_oid = 1 + (SELECT COALESCE(MAX(oid), 0) FROM objects
                                     WHERE objects.item_id = items.id);
    """,
]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns it. Each step is one transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"the database is schema version {version}, newer than this program knows "
            f"({len(MIGRATIONS)}): run the newer version or restore a backup"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # executescript commits first; BEGIN/COMMIT inside makes the step atomic
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        log.info("database schema migrated to version %d", number)
    return len(MIGRATIONS)


class Database:
    """One SQLite file, one writer thread; `call` and `submit` run functions of a connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(1, "fmu-db")
        self._conn: sqlite3.Connection | None = None
        self.version = self._executor.submit(self._open).result()

    def _open(self) -> int:
        conn = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash of the process loses nothing
        conn.execute("PRAGMA foreign_keys = ON")
        self._conn = conn
        return migrate(conn)

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._conn
        assert conn is not None, "the database is closed"
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` as one transaction and wait (start-up, tests)."""
        return self._executor.submit(self._run, fn, *args).result()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` as one transaction on the writer thread; its answer."""
        return await asyncio.wrap_future(self._executor.submit(self._run, fn, *args))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue `fn(conn, *args)` as one transaction after every earlier one; failures are logged."""
        fut = self._executor.submit(self._run, fn, *args)
        fut.add_done_callback(_log_failure)
        return fut

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            p = self.path.with_name(self.path.name + suffix)
            if p.exists():
                total += p.stat().st_size
        return total

    def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(shut).result()
        self._executor.shutdown(wait=True)


def _log_failure(fut: Future[Any]) -> None:
    exc = fut.exception()
    if exc is not None:
        log.error("database write failed: %s", exc)

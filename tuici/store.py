"""The durable record: commits, branch tips, jobs, attempts and events in SQLite (WAL).

All access happens on one dedicated thread, so the dispatcher's event loop never
blocks on disk and writes land in the order they were made.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec

from .wire import AttemptInfo, CommitInfo, Event, JobInfo

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commits (
    sha TEXT PRIMARY KEY, branch TEXT NOT NULL, author TEXT NOT NULL, subject TEXT NOT NULL,
    time REAL NOT NULL, seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tips (branch TEXT PRIMARY KEY, sha TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, commit_sha TEXT NOT NULL, priority INTEGER NOT NULL, body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_commit ON jobs (commit_sha);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
"""

# Rows that belong to one job and go when retention deletes its log (the per-test results table goes here):
# each table has a ``job_id`` column.
JOB_DETAIL_TABLES: tuple[str, ...] = ()
PRUNED_THROUGH = "events_pruned_through"  # meta: the newest event number retention deleted

_enc = msgspec.msgpack.Encoder()
_job_dec = msgspec.msgpack.Decoder(JobInfo)
_attempt_dec = msgspec.msgpack.Decoder(AttemptInfo)
_event_dec = msgspec.msgpack.Decoder(Event)


@dataclass
class Batch:
    """Changes that become durable together, in one transaction."""

    commits: list[tuple[CommitInfo, float]] = field(default_factory=list)
    tips: dict[str, str | None] = field(default_factory=dict)  # None deletes
    jobs: dict[int, tuple[JobInfo, int]] = field(default_factory=dict)  # id -> (job, priority)
    attempts: dict[tuple[int, int], AttemptInfo] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.commits or self.tips or self.jobs or self.attempts or self.events or self.meta)


@dataclass
class Snapshot:
    meta: dict[str, str]
    commits: list[CommitInfo]
    tips: dict[str, str]
    jobs: list[tuple[JobInfo, int]]
    attempts: list[AttemptInfo]
    last_seq: int


class Store:
    def __init__(self, path: Path):
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuici-store")
        self._db: sqlite3.Connection | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the store thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------ on the store thread

    def open(self) -> Snapshot:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        integrity = db.execute("PRAGMA quick_check").fetchone()[0]
        if integrity != "ok":
            raise sqlite3.DatabaseError(f"{self.path}: database is damaged: {integrity}")
        self._db = db
        meta = dict(db.execute("SELECT key, value FROM meta"))
        return Snapshot(
            meta=meta,
            commits=[
                CommitInfo(sha=r[0], branch=r[1], author=r[2], subject=r[3], time=r[4])
                for r in db.execute("SELECT sha, branch, author, subject, time FROM commits ORDER BY seen_at, rowid")
            ],
            tips=dict(db.execute("SELECT branch, sha FROM tips")),
            jobs=[(_job_dec.decode(b), p) for b, p in db.execute("SELECT body, priority FROM jobs ORDER BY id")],
            attempts=[_attempt_dec.decode(b)
                      for (b,) in db.execute("SELECT body FROM attempts ORDER BY job_id, attempt")],
            last_seq=_last_seq(db),
        )

    def write(self, batch: Batch) -> None:
        db = self._db
        assert db is not None
        with _transaction(db):
            if batch.meta:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", batch.meta.items())
            if batch.commits:
                db.executemany(
                    "INSERT OR IGNORE INTO commits VALUES (?, ?, ?, ?, ?, ?)",
                    [(c.sha, c.branch, c.author, c.subject, c.time, seen) for c, seen in batch.commits],
                )
            for branch, sha in batch.tips.items():
                if sha is None:
                    db.execute("DELETE FROM tips WHERE branch = ?", (branch,))
                else:
                    db.execute("INSERT OR REPLACE INTO tips VALUES (?, ?)", (branch, sha))
            if batch.jobs:
                db.executemany(
                    "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
                    [(j.id, j.commit, p, _enc.encode(j)) for j, p in batch.jobs.values()],
                )
            if batch.attempts:
                db.executemany(
                    "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?)",
                    [(a.job_id, a.attempt, _enc.encode(a)) for a in batch.attempts.values()],
                )
            if batch.events:
                db.executemany(
                    "INSERT INTO events VALUES (?, ?)", [(e.seq, _enc.encode(e)) for e in batch.events]
                )

    def events_after(self, seq: int, limit: int) -> list[Event]:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [_event_dec.decode(b) for (b,) in rows]

    def prune_events(self, before: float, limit: int) -> tuple[int, int]:
        """Delete up to ``limit`` of the oldest events published before ``before`` (unix time), in one
        transaction, and note the newest number deleted (``PRUNED_THROUGH``); how many went, and that number
        (0, 0 for none). Events are
        numbered in the order they were published, so the cut is found by bisecting on their numbers."""
        db = self._db
        assert db is not None
        first, last = db.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
        if first is None:
            return 0, 0
        lo, hi = first, min(last + 1, first + limit)
        while lo < hi:  # the first number whose event (or the next one after it) is not older than ``before``
            mid = (lo + hi) // 2
            row = db.execute("SELECT body FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (mid,)).fetchone()
            if row is not None and _event_dec.decode(row[0]).ts < before:
                lo = mid + 1
            else:
                hi = mid
        if lo == first:
            return 0, 0
        with _transaction(db):
            deleted = db.execute("DELETE FROM events WHERE seq < ?", (lo,)).rowcount
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (PRUNED_THROUGH, str(lo - 1)))
        return deleted, lo - 1

    def forget_jobs(self, job_ids: list[int]) -> None:
        """Delete the rows of ``JOB_DETAIL_TABLES`` that belong to these jobs (their logs were deleted)."""
        db = self._db
        assert db is not None
        if not JOB_DETAIL_TABLES or not job_ids:
            return
        with _transaction(db):
            for table in JOB_DETAIL_TABLES:
                db.executemany(f"DELETE FROM {table} WHERE job_id = ?", [(job_id,) for job_id in job_ids])

    def size(self) -> int:
        """Bytes the database takes on disk, its write-ahead log included. (Deleted rows leave free pages that
        later writes reuse: the file stops growing rather than shrinks.)"""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def shutdown(self) -> None:
        self._executor.submit(self.close).result()
        self._executor.shutdown(wait=True)


def _last_seq(db: sqlite3.Connection) -> int:
    """The newest event's number: retention may have deleted every event, but never their numbers."""
    newest = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    pruned = db.execute("SELECT value FROM meta WHERE key = ?", (PRUNED_THROUGH,)).fetchone()
    return max(newest, int(pruned[0]) if pruned else 0)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite ends it itself on some errors, a full disk among them
            db.execute("ROLLBACK")
        raise


def last_seq(path: Path) -> int:
    """The newest event's number in the store at ``path`` (0 for none), read before a dispatcher starts on it:
    every event that dispatcher publishes comes after it."""
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(path)
        try:
            return _last_seq(db)
        finally:
            db.close()
    except sqlite3.Error:  # no events table yet, or a damaged file: the dispatcher will say so
        return 0

"""The durable record: commits, branch tips, jobs, attempts, bisections and events in SQLite (WAL).

All access happens on one dedicated thread, so the dispatcher's event loop never
blocks on disk and writes land in the order they were made.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgspec

from .wire import AttemptInfo, BisectionInfo, CommitInfo, Event, JobInfo

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
CREATE TABLE IF NOT EXISTS bisections (id INTEGER PRIMARY KEY, body BLOB NOT NULL, made BLOB NOT NULL);
"""

_enc = msgspec.msgpack.Encoder()
_job_dec = msgspec.msgpack.Decoder(JobInfo)
_attempt_dec = msgspec.msgpack.Decoder(AttemptInfo)
_event_dec = msgspec.msgpack.Decoder(Event)
_bisection_dec = msgspec.msgpack.Decoder(BisectionInfo)
_ids_dec = msgspec.msgpack.Decoder(list[int])


@dataclass
class Batch:
    """Changes that become durable together, in one transaction."""

    commits: list[tuple[CommitInfo, float]] = field(default_factory=list)
    tips: dict[str, str | None] = field(default_factory=dict)  # None deletes
    jobs: dict[int, tuple[JobInfo, int]] = field(default_factory=dict)  # id -> (job, priority)
    attempts: dict[tuple[int, int], AttemptInfo] = field(default_factory=dict)
    bisections: dict[int, tuple[BisectionInfo, list[int]]] = field(default_factory=dict)  # id -> (it, jobs it made)
    events: list[Event] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.commits or self.tips or self.jobs or self.attempts or self.bisections or self.events
                    or self.meta)


@dataclass
class Snapshot:
    meta: dict[str, str]
    commits: list[CommitInfo]
    tips: dict[str, str]
    jobs: list[tuple[JobInfo, int]]
    attempts: list[AttemptInfo]
    last_seq: int
    bisections: list[tuple[int, BisectionInfo, list[int]]] = field(default_factory=list)


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
        return Snapshot(
            meta=dict(db.execute("SELECT key, value FROM meta")),
            commits=[
                CommitInfo(sha=r[0], branch=r[1], author=r[2], subject=r[3], time=r[4])
                for r in db.execute("SELECT sha, branch, author, subject, time FROM commits ORDER BY seen_at, rowid")
            ],
            tips=dict(db.execute("SELECT branch, sha FROM tips")),
            jobs=[(_job_dec.decode(b), p) for b, p in db.execute("SELECT body, priority FROM jobs ORDER BY id")],
            attempts=[_attempt_dec.decode(b)
                      for (b,) in db.execute("SELECT body FROM attempts ORDER BY job_id, attempt")],
            last_seq=db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0],
            bisections=[(i, _bisection_dec.decode(b), _ids_dec.decode(m))
                        for i, b, m in db.execute("SELECT id, body, made FROM bisections ORDER BY id")],
        )

    def write(self, batch: Batch) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
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
            if batch.bisections:
                db.executemany(
                    "INSERT OR REPLACE INTO bisections VALUES (?, ?, ?)",
                    [(i, _enc.encode(b), _enc.encode(made)) for i, (b, made) in batch.bisections.items()],
                )
            if batch.events:
                db.executemany(
                    "INSERT INTO events VALUES (?, ?)", [(e.seq, _enc.encode(e)) for e in batch.events]
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite ends it itself on some errors, a full disk among them
                db.execute("ROLLBACK")
            raise

    def events_after(self, seq: int, limit: int) -> list[Event]:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [_event_dec.decode(b) for (b,) in rows]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def shutdown(self) -> None:
        self._executor.submit(self.close).result()
        self._executor.shutdown(wait=True)


def last_seq(path: Path) -> int:
    """The newest event's number in the store at ``path`` (0 for none), read before a dispatcher starts on it:
    every event that dispatcher publishes comes after it."""
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:  # no events table yet, or a damaged file: the dispatcher will say so
        return 0

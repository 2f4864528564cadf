"""The durable record: commits, branch tips, jobs, attempts, bisections, events and test results in SQLite (WAL).

All access happens on one dedicated thread, so the dispatcher's event loop never
blocks on disk and writes land in the order they were made.

A finished job's test cases are written with its result, in the same transaction, by ``testrecord`` (the same
for the PostgreSQL store).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import msgspec

from . import testrecord
from .wire import (
    AttemptInfo,
    BisectionInfo,
    CommitInfo,
    Event,
    FlakyTest,
    HistoryEntry,
    JobInfo,
    TestCase,
    TestReport,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commits (
    sha TEXT PRIMARY KEY, branch TEXT NOT NULL, author TEXT NOT NULL, subject TEXT NOT NULL,
    time REAL NOT NULL, seen_at REAL NOT NULL, skipped INTEGER NOT NULL DEFAULT 0
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
CREATE INDEX IF NOT EXISTS commits_branch ON commits (branch);
CREATE TABLE IF NOT EXISTS test_names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS test_jobs (
    job_id INTEGER PRIMARY KEY, commit_sha TEXT NOT NULL, branch TEXT NOT NULL,
    position INTEGER NOT NULL, failing INTEGER NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS test_jobs_branch ON test_jobs (branch, position);
CREATE INDEX IF NOT EXISTS test_jobs_commit ON test_jobs (commit_sha);
CREATE TABLE IF NOT EXISTS job_tests (
    job_id INTEGER NOT NULL, test_id INTEGER NOT NULL, outcome INTEGER NOT NULL, duration REAL NOT NULL,
    flaky INTEGER NOT NULL, PRIMARY KEY (job_id, test_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS test_failures (
    job_id INTEGER NOT NULL, test_id INTEGER NOT NULL, message TEXT, details TEXT, PRIMARY KEY (job_id, test_id)
);
CREATE TABLE IF NOT EXISTS flaky (
    test_id INTEGER NOT NULL, job_id INTEGER NOT NULL, commit_sha TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (test_id, job_id)
);
CREATE TABLE IF NOT EXISTS bisections (id INTEGER PRIMARY KEY, body BLOB NOT NULL, made BLOB NOT NULL);
"""

PRUNED_THROUGH = "events_pruned_through"  # meta: the newest event number retention deleted

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
    tests: list[JobTests] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.commits or self.tips or self.jobs or self.attempts or self.bisections or self.events
                    or self.meta or self.tests)


@dataclass(frozen=True)
class JobTests:
    """A finished job's test cases, stored with its result."""

    job_id: int
    commit: str
    branch: str
    at: float  # when the job finished
    cases: list[TestCase]


@dataclass
class Snapshot:
    meta: dict[str, str]
    commits: list[CommitInfo]
    tips: dict[str, str]
    jobs: list[tuple[JobInfo, int]]
    attempts: list[AttemptInfo]
    last_seq: int
    bisections: list[tuple[int, BisectionInfo, list[int]]] = field(default_factory=list)


class RecordStore(Protocol):
    """What the journal needs of a durable record, SQLite's (``Store``) or PostgreSQL's (``pgstore.PgStore``)."""

    path: Any  # named in log lines

    async def load(self) -> Snapshot: ...

    async def save(self, batch: Batch) -> None: ...

    async def read_events(self, after: int, limit: int) -> list[Event]: ...

    async def release(self) -> None: ...

    async def prune_events_before(self, before: float, limit: int) -> tuple[int, int]: ...

    async def forget_job_rows(self, job_ids: list[int]) -> None: ...

    async def size_bytes(self) -> int: ...

    async def test_report(self, job_id: int, failed_only: bool, history: int) -> list[TestReport] | None:
        """A job's test cases as ``testrecord.job_tests`` reads them; None if it has no test results."""

    async def test_history(self, text: str, branch: str, limit: int) -> tuple[str, str, list[HistoryEntry]]:
        """As ``testrecord.history``."""

    async def flaky_tests(self) -> list[FlakyTest]:
        """As ``testrecord.flaky``."""


class Store:
    """The record in one SQLite file. The plain methods run on the store thread; the async ones (the
    ``RecordStore`` side) hand them to it."""

    def __init__(self, path: Path):
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuici-store")
        self._db: sqlite3.Connection | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the store thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def load(self) -> Snapshot:
        return await self.run(self.open)

    async def save(self, batch: Batch) -> None:
        await self.run(self.write, batch)

    async def read_events(self, after: int, limit: int) -> list[Event]:
        return await self.run(self.events_after, after, limit)

    async def release(self) -> None:
        await asyncio.to_thread(self.shutdown)

    async def prune_events_before(self, before: float, limit: int) -> tuple[int, int]:
        return await self.run(self.prune_events, before, limit)

    async def forget_job_rows(self, job_ids: list[int]) -> None:
        await self.run(self.forget_jobs, job_ids)

    async def size_bytes(self) -> int:
        return await self.run(self.size)

    async def test_report(self, job_id: int, failed_only: bool, history: int) -> list[TestReport] | None:
        return await self.run(self.job_tests, job_id, failed_only, history)

    async def test_history(self, text: str, branch: str, limit: int) -> tuple[str, str, list[HistoryEntry]]:
        return await self.run(self.history, text, branch, limit)

    async def flaky_tests(self) -> list[FlakyTest]:
        return await self.run(self.flaky)

    # ------------------------------------------------------------ on the store thread

    def open(self) -> Snapshot:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        if "skipped" not in {row[1] for row in db.execute("PRAGMA table_info(commits)")}:  # made before it was
            db.execute("ALTER TABLE commits ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0")
        integrity = db.execute("PRAGMA quick_check").fetchone()[0]
        if integrity != "ok":
            raise sqlite3.DatabaseError(f"{self.path}: database is damaged: {integrity}")
        self._db = db
        meta = dict(db.execute("SELECT key, value FROM meta"))
        return Snapshot(
            meta=meta,
            commits=[_commit(r) for r in db.execute(f"SELECT {COMMIT_COLUMNS} FROM commits ORDER BY seen_at, rowid")],
            tips=dict(db.execute("SELECT branch, sha FROM tips")),
            jobs=[(_job_dec.decode(b), p) for b, p in db.execute("SELECT body, priority FROM jobs ORDER BY id")],
            attempts=[_attempt_dec.decode(b)
                      for (b,) in db.execute("SELECT body FROM attempts ORDER BY job_id, attempt")],
            last_seq=_last_seq(db),
            bisections=[(i, _bisection_dec.decode(b), _ids_dec.decode(m))
                        for i, b, m in db.execute("SELECT id, body, made FROM bisections ORDER BY id")],
        )

    def write(self, batch: Batch) -> None:
        db = self._db
        assert db is not None
        with _transaction(db):
            if batch.meta:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", batch.meta.items())
            if batch.commits:
                db.executemany(
                    "INSERT OR IGNORE INTO commits VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(c.sha, c.branch, c.author, c.subject, c.time, seen, c.skipped) for c, seen in batch.commits],
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
            for tests in batch.tests:
                testrecord.run_now(testrecord.write(_Sqlite(db), tests))

    # ------------------------------------------------------------ test results, read (``testrecord``)

    def job_tests(self, job_id: int, failed_only: bool, history: int) -> list[TestReport] | None:
        return testrecord.run_now(testrecord.job_tests(self._sqlite(), job_id, failed_only, history))

    def history(self, text: str, branch: str, limit: int) -> tuple[str, str, list[HistoryEntry]]:
        return testrecord.run_now(testrecord.history(self._sqlite(), text, branch, limit))

    def flaky(self) -> list[FlakyTest]:
        return testrecord.run_now(testrecord.flaky(self._sqlite()))

    def _sqlite(self) -> _Sqlite:
        assert self._db is not None
        return _Sqlite(self._db)

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
        """Delete the rows of ``testrecord.JOB_DETAIL_TABLES`` that belong to these jobs (their logs were deleted)."""
        db = self._db
        assert db is not None
        if not job_ids:
            return
        with _transaction(db):
            testrecord.run_now(testrecord.forget(_Sqlite(db), job_ids))

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


class _Sqlite:
    """The store's connection as ``testrecord`` asks it, answering at once (on the store thread)."""

    position = "rowid"
    like = "LIKE"

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.db.execute(sql, params).fetchall()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.db.execute(sql, params)

    async def fill(self, table: str, rows: list[tuple]) -> None:
        if rows:
            self.db.executemany(f"INSERT INTO {table} VALUES ({','.join('?' * len(rows[0]))})", rows)


COMMIT_COLUMNS = "sha, branch, author, subject, time, skipped"


def _commit(row: tuple) -> CommitInfo:
    return CommitInfo(sha=row[0], branch=row[1], author=row[2], subject=row[3], time=row[4], skipped=bool(row[5]))


@dataclass
class NewestJobs:
    """What a dispatcher's status limited to the newest jobs lists, as the store has it (see ``newest_jobs``)."""

    commits: list[CommitInfo]  # the jobs' commits, in the order they were seen
    jobs: list[JobInfo]  # oldest first
    bisections: list[BisectionInfo]
    last_seq: int


def newest_jobs(path: Path, count: int) -> NewestJobs:
    """The newest ``count`` jobs of the SQLite store at ``path``, read on a read-only connection of its own: the
    control center's first page while the dispatcher it started is still loading the same file (WAL lets the
    two read at once). ``sqlite3.Error`` if it cannot be read."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    try:
        jobs = []
        for body, priority in reversed(db.execute("SELECT body, priority FROM jobs ORDER BY id DESC LIMIT ?",
                                                  (count,)).fetchall()):
            job = _job_dec.decode(body)
            job.priority = priority  # the column is authoritative (as Scheduler.load has it)
            jobs.append(job)
        shas = sorted({job.commit for job in jobs})
        commits = [_commit(r) for r in db.execute(
            f"SELECT {COMMIT_COLUMNS} FROM commits WHERE sha IN ({', '.join('?' * len(shas))}) "
            "ORDER BY seen_at, rowid", shas)]
        bisections = [_bisection_dec.decode(b) for (b,) in db.execute("SELECT body FROM bisections ORDER BY id")]
        return NewestJobs(commits, jobs, bisections, _last_seq(db))
    finally:
        db.close()


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

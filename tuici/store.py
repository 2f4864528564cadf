"""The durable record: commits, branch tips, jobs, attempts, bisections, events and test results in SQLite (WAL).

All access happens on one dedicated thread, so the dispatcher's event loop never
blocks on disk and writes land in the order they were made.

A finished job's test cases are written with its result, in the same transaction: a test's name once
(``test_names``), then per job one small row each (``job_tests``), the text of failures apart
(``test_failures``). Where a test broke or was fixed is not stored but read off the branch's tested commits
(``test_jobs``) when asked for, by the rules of ``testcases``: a job that finishes late, or one a bisect adds,
is taken into account as soon as it is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import msgspec

from . import testcases
from .testcases import Tested
from .wire import (
    AttemptInfo,
    BisectionInfo,
    CommitInfo,
    Event,
    FlakyTest,
    HistoryEntry,
    JobInfo,
    TestCase,
    TestOutcome,
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
CREATE TEMP TABLE IF NOT EXISTS incoming (
    name TEXT NOT NULL, outcome INTEGER NOT NULL, duration REAL NOT NULL, flaky INTEGER NOT NULL,
    message TEXT, details TEXT
);
CREATE TABLE IF NOT EXISTS bisections (id INTEGER PRIMARY KEY, body BLOB NOT NULL, made BLOB NOT NULL);
"""

# How an outcome is stored: these codes are on disk, so the order never changes.
OUTCOMES: tuple[TestOutcome, ...] = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
CODES = {outcome: code for code, outcome in enumerate(OUTCOMES)}
FAILING_CODES = "(1, 2)"  # failed, error (testcases.FAILING), as SQL
PASSING_CODES = "(0, 5)"  # passed, xpassed (testcases.PASSING)
MAX_WALK = 200  # tested commits a branch's history is walked back to find where each failing test broke
MAX_STRIPS = 500  # failing and flaky tests of a job given a history strip, at most
_PARAMS = 500  # test ids per IN (...) list
# Rows that belong to one job and go when retention deletes its log: the job's per-test results. Each table has a
# ``job_id`` column.
JOB_DETAIL_TABLES: tuple[str, ...] = ("job_tests", "test_failures", "flaky", "test_jobs")
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
            commits=[
                CommitInfo(sha=r[0], branch=r[1], author=r[2], subject=r[3], time=r[4], skipped=bool(r[5]))
                for r in db.execute(
                    "SELECT sha, branch, author, subject, time, skipped FROM commits ORDER BY seen_at, rowid")
            ],
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
                self._write_tests(db, tests)

    def _write_tests(self, db: sqlite3.Connection, tests: JobTests) -> None:
        """A job's cases, and the tests seen flaky by them: passed on retry in this job, or failing here and
        passing in another job of the same commit (a rerun), or the other way round."""
        job = tests.job_id
        for table in ("job_tests", "test_failures", "flaky", "test_jobs"):
            db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job,))
        failing = sum(1 for case in tests.cases if case.outcome in testcases.FAILING)
        db.execute("INSERT INTO test_jobs VALUES (?, ?, ?, COALESCE((SELECT rowid FROM commits WHERE sha = ?), 0), "
                   "?, ?)", (job, tests.commit, tests.branch, tests.commit, failing, tests.at))
        db.execute("DELETE FROM temp.incoming")
        db.executemany("INSERT INTO temp.incoming VALUES (?, ?, ?, ?, ?, ?)",
                       [(c.name, CODES[c.outcome], c.duration_s, c.flaky, c.message or None, c.details or None)
                        for c in tests.cases])
        db.execute("INSERT OR IGNORE INTO test_names (name) SELECT name FROM temp.incoming")
        named = "FROM temp.incoming i JOIN test_names n ON n.name = i.name"
        db.execute(f"INSERT OR REPLACE INTO job_tests SELECT ?, n.id, i.outcome, i.duration, i.flaky {named}", (job,))
        db.execute(f"INSERT OR REPLACE INTO test_failures SELECT ?, n.id, i.message, i.details {named} "
                   "WHERE i.message IS NOT NULL OR i.details IS NOT NULL", (job,))
        db.execute("DELETE FROM temp.incoming")
        db.execute("INSERT OR IGNORE INTO flaky SELECT test_id, job_id, ?, ? FROM job_tests WHERE job_id = ? AND flaky",
                   (tests.commit, tests.at, job))
        others = db.execute("SELECT job_id FROM test_jobs WHERE commit_sha = ? AND job_id != ?",
                            (tests.commit, job)).fetchall()
        for (other,) in others:
            db.execute(
                "INSERT OR IGNORE INTO flaky SELECT t.test_id, t.job_id, ?, ? FROM job_tests t "
                "JOIN job_tests o ON o.job_id = ? AND o.test_id = t.test_id WHERE t.job_id = ? AND ("
                f"(t.outcome IN {FAILING_CODES} AND o.outcome IN {PASSING_CODES}) OR "
                f"(t.outcome IN {PASSING_CODES} AND o.outcome IN {FAILING_CODES}))",
                (tests.commit, tests.at, other, job))

    # ------------------------------------------------------------ test results, read

    def job_tests(self, job_id: int, failed_only: bool, history: int) -> list[TestReport] | None:
        """The job's test cases, failures first, each failing one with where it broke, each passing one that
        failed on the previous tested commit with where it was fixed, and the failing and flaky ones with their
        last ``history`` outcomes on the branch; None if the job has no test results."""
        db = self._db
        assert db is not None
        row = db.execute("SELECT commit_sha, branch, position FROM test_jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        this, branch = Tested(row[0], job_id, row[2]), row[1]
        only = f" AND t.outcome IN {FAILING_CODES}" if failed_only else ""
        cases = {
            test_id: TestReport(name=name, outcome=OUTCOMES[outcome], duration_s=duration, flaky=bool(flaky))
            for test_id, name, outcome, duration, flaky in db.execute(
                "SELECT t.test_id, n.name, t.outcome, t.duration, t.flaky FROM job_tests t "
                f"JOIN test_names n ON n.id = t.test_id WHERE t.job_id = ?{only}", (job_id,))
        }
        for test_id, message, details in db.execute(
                "SELECT test_id, message, details FROM test_failures WHERE job_id = ?", (job_id,)):
            case = cases.get(test_id)
            if case is not None:
                case.message, case.details = message or "", details or ""
        earlier = self._tested_before(branch, this)
        between = _Between(db, branch)
        failing = [key for key, case in cases.items() if case.outcome in testcases.FAILING]
        passing = [key for key, case in cases.items() if case.outcome not in testcases.FAILING]
        failed_at = _FailedAt(db)
        walk = ((tested, failed_at(tested, count)) for tested, count in earlier)
        for key, change in testcases.broken_by(failing, this, walk, between).items():
            cases[key].broken_by = change
        previous = (earlier[0][0], failed_at(*earlier[0])) if earlier else None
        for key, change in testcases.fixed_by(passing, this, previous, between).items():
            cases[key].fixed_by = change
        if history:
            shown = sorted((key for key, case in cases.items() if case.outcome in testcases.FAILING or case.flaky),
                           key=lambda key: testcases.order_key(cases[key]))[:MAX_STRIPS]
            steps = [self._outcomes(tested.job, shown) for tested in [this, *(t for t, _ in earlier[:history - 1])]]
            for key, strip in testcases.history_strip(shown, steps).items():
                cases[key].history = strip
        return sorted(cases.values(), key=testcases.order_key)

    def _tested_before(self, branch: str, this: Tested) -> list[tuple[Tested, int]]:
        """The branch's tested commits before ``this`` one, newest first, each by its latest job with results
        (and how many tests failed in it); ``MAX_WALK`` at most."""
        assert self._db is not None
        found: list[tuple[Tested, int]] = []
        seen: set[str] = set()
        for job_id, sha, position, failing in self._db.execute(
                "SELECT job_id, commit_sha, position, failing FROM test_jobs WHERE branch = ? AND position < ? "
                "ORDER BY position DESC, job_id DESC", (branch, this.position)):
            if sha not in seen:
                seen.add(sha)
                found.append((Tested(sha, job_id, position), failing))
                if len(found) >= MAX_WALK:
                    break
        return found

    def _outcomes(self, job_id: int, test_ids: list[int]) -> dict[int, TestOutcome]:
        assert self._db is not None
        found: dict[int, TestOutcome] = {}
        for start in range(0, len(test_ids), _PARAMS):
            chunk = test_ids[start:start + _PARAMS]
            marks = ",".join("?" * len(chunk))
            found.update((test_id, OUTCOMES[outcome]) for test_id, outcome in self._db.execute(
                f"SELECT test_id, outcome FROM job_tests WHERE job_id = ? AND test_id IN ({marks})", (job_id, *chunk)))
        return found

    def history(self, text: str, branch: str, limit: int) -> tuple[str, str, list[HistoryEntry]]:
        """The test ``text`` names (see ``find_test``): its name, the branch (given, or where it last ran),
        and its outcomes there, newest first."""
        db = self._db
        assert db is not None
        test_id, name = self.find_test(text)
        if not branch:
            row = db.execute("SELECT j.branch FROM test_jobs j JOIN job_tests t ON t.job_id = j.job_id "
                             "AND t.test_id = ? ORDER BY j.job_id DESC LIMIT 1", (test_id,)).fetchone()
            branch = row[0] if row else ""
        entries = [
            HistoryEntry(commit=sha, job=job_id, outcome=OUTCOMES[outcome], duration_s=duration, flaky=bool(flaky))
            for sha, job_id, outcome, duration, flaky in db.execute(
                "SELECT j.commit_sha, j.job_id, t.outcome, t.duration, t.flaky FROM test_jobs j "
                "JOIN job_tests t ON t.job_id = j.job_id AND t.test_id = ? WHERE j.branch = ? "
                "ORDER BY j.position DESC, j.job_id DESC LIMIT ?", (test_id, branch, limit or -1))
        ]
        return name, branch, entries

    def find_test(self, text: str) -> tuple[int, str]:
        """The one test ``text`` names: its full name, or a part of one name alone (preferring a name that ends
        with it after ``::`` or ``/``); ``UnknownTest`` says which match, if not exactly one."""
        db = self._db
        assert db is not None
        row = db.execute("SELECT id, name FROM test_names WHERE name = ?", (text,)).fetchone()
        if row is not None:
            return row[0], row[1]
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        matches = db.execute("SELECT id, name FROM test_names WHERE name LIKE ? ESCAPE '\\' ORDER BY name LIMIT 1000",
                             (pattern,)).fetchall()
        matches = [m for m in matches if text in m[1]] or matches
        if len(matches) > 1:
            matches = [m for m in matches if m[1].endswith((f"::{text}", f"/{text}"))] or matches
        if len(matches) == 1:
            return matches[0][0], matches[0][1]
        if not matches:
            raise UnknownTest(f"no test is named {text!r}")
        listed = ", ".join(name for _, name in matches[:10])
        raise UnknownTest(f"{len(matches)}{'+' if len(matches) >= 1000 else ''} tests match {text!r}: {listed}"
                          f"{', …' if len(matches) > 10 else ''}")

    def flaky(self) -> list[FlakyTest]:
        """Every test seen flaky: in how many jobs and on how many commits, and when, where, last; the latest
        first."""
        assert self._db is not None
        return [
            FlakyTest(name=name, jobs=jobs, commits=commits, last_seen=at, last_commit=sha, last_job=job_id,
                      branch=branch)
            for name, jobs, commits, at, sha, job_id, branch in self._db.execute(
                "SELECT n.name, count(*), count(DISTINCT f.commit_sha), max(f.at), f.commit_sha, f.job_id, j.branch "
                "FROM flaky f JOIN test_names n ON n.id = f.test_id JOIN test_jobs j ON j.job_id = f.job_id "
                "GROUP BY f.test_id ORDER BY max(f.at) DESC, n.name")
        ]

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


class UnknownTest(LookupError):
    """A test name that names no test, or more than one (the message says which)."""


class _Between:
    """Commits of a branch strictly between two tested ones (the untested ones: the walk goes over every
    tested commit in turn), counted once per pair."""

    def __init__(self, db: sqlite3.Connection, branch: str):
        self.db, self.branch = db, branch
        self.counted: dict[tuple[int, int], int] = {}

    def __call__(self, after: Tested, since: Tested) -> int:
        key = (after.position, since.position)
        if key not in self.counted:
            self.counted[key] = self.db.execute(
                "SELECT count(*) FROM commits WHERE branch = ? AND rowid > ? AND rowid < ?",
                (self.branch, *key)).fetchone()[0]
        return self.counted[key]


class _FailedAt:
    """The tests that failed in a tested commit's job, read once each (none read when it had no failure)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.read: dict[int, frozenset[int]] = {}

    def __call__(self, tested: Tested, failing: int) -> frozenset[int]:
        if not failing:
            return frozenset()
        if tested.job not in self.read:
            self.read[tested.job] = frozenset(test_id for (test_id,) in self.db.execute(
                f"SELECT test_id FROM job_tests WHERE job_id = ? AND outcome IN {FAILING_CODES}", (tested.job,)))
        return self.read[tested.job]
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

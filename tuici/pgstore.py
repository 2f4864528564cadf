"""The durable record in PostgreSQL, shared by every dispatcher of a group, and the lease that makes one active.

One row (``leader``) names the active dispatcher, with an epoch and an expiry. The active one renews it well
before it expires; a standby takes it when it has expired, or at once when the holder's session is gone (the
holder keeps a session-level advisory lock for as long as it lives, so a killed dispatcher frees it the moment
its connection closes). Every write checks, in its own transaction and under a share lock on that row, that the
epoch is still ours: a dispatcher that lost the lease, even one that was stopped and resumed, cannot change
anything, and the new one takes its snapshot only after the old one's last write.

Uses psycopg 3's async API (``pip install 'tuici[postgres]'``); nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable, Sequence

import msgspec

from . import testrecord
from .errors import ConfigError, LeaseLost
from .store import PRUNED_THROUGH
from .wire import AttemptInfo, BisectionInfo, CommitInfo, Event, FlakyTest, HistoryEntry, JobInfo, TestReport

if TYPE_CHECKING:
    import psycopg

    from .store import Batch, Snapshot

log = logging.getLogger("tuici.dispatcher")

ADVISORY_KEY = 0x7475696369  # "tuici": the session lock the active dispatcher holds while it lives
MIGRATIONS = "migrations/postgresql"

_enc = msgspec.msgpack.Encoder()
_job_dec = msgspec.msgpack.Decoder(JobInfo)
_attempt_dec = msgspec.msgpack.Decoder(AttemptInfo)
_event_dec = msgspec.msgpack.Decoder(Event)
_bisection_dec = msgspec.msgpack.Decoder(BisectionInfo)
_ids_dec = msgspec.msgpack.Decoder(list[int])


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError("a postgresql:// store needs psycopg: pip install 'tuici[postgres]'") from None
    return psycopg


def redact(dsn: str) -> str:
    """The DSN without its password, for logs and messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ""
    netloc = f"{user}{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _session_name(holder: str) -> str:
    """SQL for the ``application_name`` of every session of the dispatcher ``holder`` (an SQL expression), so a
    successor can find them: a digest, as the server cuts names at 63 bytes."""
    return f"'tuici ' || left(md5({holder}), 16)"


async def _connect(dsn: str, holder: str) -> psycopg.AsyncConnection:
    """An autocommit connection named as one of ``holder``'s sessions (``_session_name``)."""
    conn = await _psycopg().AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute(f"SELECT set_config('application_name', {_session_name('%s::text')}, false)", (holder,))
    return conn


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration file, in order."""
    found = []
    for entry in resources.files("tuici").joinpath(MIGRATIONS).iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: psycopg.AsyncConnection) -> int:
    """Bring the schema to the newest version, once even when several dispatchers start together; the version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_KEY + 1,))
        await conn.execute("CREATE TABLE IF NOT EXISTS tuici_schema (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                           " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM tuici_schema")
        row = await cur.fetchone()
        current = row[0] if row else 0
        known = migrations()
        if known and current > known[-1][0]:
            raise ConfigError(f"the database's schema (version {current}) is newer than this tuici knows "
                              f"({known[-1][0]}): upgrade tuici")
        for version, name, sql in known:
            if version > current:
                await conn.execute(sql.encode())
                await conn.execute("INSERT INTO tuici_schema (version, name) VALUES (%s, %s)", (version, name))
                current = version
    return current


@dataclass
class Leadership:
    """What a dispatcher knows of its own lease: the epoch it won and when it must stop, by its own clock."""

    holder: str
    epoch: int
    deadline: float  # monotonic time after which it may no longer act, unless renewed before


class PgStore:
    """The same record as the SQLite store (``tuici.store``), in PostgreSQL, with every write fenced by the
    lease's epoch."""

    def __init__(self, dsn: str, holder: str, address: str, lease_seconds: float):
        self.dsn = dsn
        self.path = redact(dsn)  # what log lines name
        self.holder = holder
        self.address = address
        self.lease_seconds = lease_seconds
        self.epoch = 0
        self._conn: psycopg.AsyncConnection | None = None  # writes and reads
        self._lease_conn: psycopg.AsyncConnection | None = None  # the lease, and the advisory lock on it
        # One task at a time on ``_conn``: a transaction spans several awaits, which another task's statements
        # (the journal's writes, retention, status) must not fall between.
        self._using = asyncio.Lock()

    async def connect(self) -> None:
        psycopg = _psycopg()
        try:
            self._conn = await _connect(self.dsn, self.holder)
            self._lease_conn = await _connect(self.dsn, self.holder)
        except psycopg.Error as exc:
            raise ConfigError(f"cannot connect to {self.path}: {exc}") from exc
        await migrate(self._conn)
        await self._lease_conn.execute(
            "INSERT INTO dispatchers VALUES (%s, %s, now(), now()) ON CONFLICT (holder) DO UPDATE"
            " SET address = excluded.address, seen_at = now()", (self.holder, self.address))

    # ------------------------------------------------------------------ the lease

    async def try_lead(self) -> int | None:
        """Take the lease if it is free, expired, or its holder's session is gone; the new epoch, or None."""
        conn = self._lease_conn
        assert conn is not None
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,))
        locked = (await cur.fetchone())[0]  # type: ignore[index]
        if not locked:
            await self._end_sessions_of_the_expired()
        try:
            async with conn.transaction():
                # A try that began while the leader was writing (holding the row) waits for it at most a lease:
                # were the leader lost there, the next try ends its sessions (its lease has expired by then).
                await conn.execute(f"SET LOCAL lock_timeout = {int(self.lease_seconds * 1000)}")
                cur = await conn.execute(
                    "INSERT INTO leader VALUES (1, %(h)s, %(a)s, 1, now() + make_interval(secs => %(s)s))"
                    " ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, address = excluded.address,"
                    " epoch = leader.epoch + 1, expires_at = excluded.expires_at"
                    " WHERE leader.expires_at < now() OR %(locked)s"
                    " RETURNING epoch",
                    {"h": self.holder, "a": self.address, "s": self.lease_seconds, "locked": locked})
                row = await cur.fetchone()
        except _psycopg().errors.LockNotAvailable as exc:
            log.warning("the lease row stayed locked for a lease (a dispatcher lost in the middle of a write?): %s",
                        exc)
            row = None
        if row is None:
            if locked:  # only when the row was held: let the lock go, the lease is not ours
                await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))
            return None
        if not locked:
            # The lease expired while its holder's session lives on (a machine that vanished): end that
            # session, so the lock is ours and the next standby is not misled by it.
            await self._take_lock_from_the_gone()
        self.epoch = row[0]
        return self.epoch

    async def _end_sessions_of_the_expired(self) -> None:
        """End every database session of the dispatcher whose lease has expired, if it has.

        A dispatcher whose machine vanished (its link cut) in the middle of a write leaves a session that holds
        the lease row's share lock, and our takeover would wait for it for as long as the server takes to notice
        (hours, by TCP keepalive). The server's ``idle_in_transaction_session_timeout`` does not end it for sure:
        the Flush psycopg sends after a pipeline's Sync (``executemany``) disarms that timer until the next
        Sync, which never comes. So we end it, as soon as its lease has expired (it stopped acting on it before
        then, by its own clock)."""
        conn = self._lease_conn
        assert conn is not None
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(a.pid) FROM leader l JOIN pg_stat_activity a"
                f" ON a.application_name = {_session_name('l.holder')}"
                " WHERE l.id = 1 AND l.expires_at < now() AND l.holder <> %s AND a.pid <> pg_backend_pid()",
                (self.holder,))
        except _psycopg().Error as exc:
            log.warning("could not end the sessions of the dispatcher whose lease expired: %s", exc)

    async def _take_lock_from_the_gone(self) -> None:
        """End the session that holds the advisory lock under an expired lease, and take the lock; if we may not
        end it (another role's), lead without the lock: a standby then waits for our lease to expire."""
        conn = self._lease_conn
        assert conn is not None
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
                " AND objid = %s AND objsubid = 1 AND granted AND pid <> pg_backend_pid()",
                (ADVISORY_KEY >> 32, ADVISORY_KEY & 0xFFFFFFFF))
        except _psycopg().Error as exc:
            log.warning("could not end the session of the dispatcher whose lease expired: %s", exc)
            return
        for _ in range(40):
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,))
            if (await cur.fetchone())[0]:  # type: ignore[index]
                return
            await asyncio.sleep(0.05)
        log.warning("the advisory lock of the dispatcher whose lease expired is still held; leading without it")

    async def renew(self) -> bool:
        """Push our lease's expiry on; False once it is no longer ours."""
        conn = self._lease_conn
        assert conn is not None
        cur = await conn.execute(
            "UPDATE leader SET expires_at = now() + make_interval(secs => %s) WHERE id = 1 AND epoch = %s"
            " AND holder = %s RETURNING epoch", (self.lease_seconds, self.epoch, self.holder))
        await conn.execute("UPDATE dispatchers SET seen_at = now() WHERE holder = %s", (self.holder,))
        return await cur.fetchone() is not None

    async def seen(self) -> None:
        """A standby's sign of life, for `tuici status`."""
        assert self._lease_conn is not None
        await self._lease_conn.execute("UPDATE dispatchers SET seen_at = now() WHERE holder = %s", (self.holder,))

    async def group_token(self) -> str:
        """The group's token, kept here: the first dispatcher makes it, the others take it."""
        import secrets

        conn = self._db()
        async with self._using:
            await conn.execute("INSERT INTO meta VALUES ('token', %s) ON CONFLICT (key) DO NOTHING",
                               (secrets.token_urlsafe(32),))
            cur = await conn.execute("SELECT value FROM meta WHERE key = 'token'")
            row = await cur.fetchone()
        if row is None:
            raise ConfigError(f"{self.path}: the group's token could not be kept")
        return row[0]

    async def leader(self) -> tuple[str, str, int] | None:
        """(holder, address, epoch) of the current lease, if it has not expired."""
        conn = self._db()
        async with self._using:
            cur = await conn.execute(
                "SELECT holder, address, epoch FROM leader WHERE id = 1 AND expires_at > now()")
            row = await cur.fetchone()
        return (row[0], row[1], row[2]) if row else None

    async def group(self, within: float) -> list[tuple[str, str, bool, float]]:
        """(holder, address, leads, seen_at as unix time) of every dispatcher heard from in the last ``within``
        seconds, the leader first."""
        assert self._lease_conn is not None
        cur = await self._lease_conn.execute(
            "SELECT d.holder, d.address, d.holder = l.holder AND l.expires_at > now(), extract(epoch FROM d.seen_at)"
            " FROM dispatchers d LEFT JOIN leader l ON l.id = 1"
            " WHERE d.seen_at > now() - make_interval(secs => %s) ORDER BY 3 DESC, d.started_at", (within,))
        return [(h, a, bool(lead), float(seen)) for h, a, lead, seen in await cur.fetchall()]

    # ------------------------------------------------------------------ the record

    async def load(self) -> Snapshot:
        from .store import Snapshot

        conn = self._db()

        async def rows(sql: str) -> list[tuple]:
            cur = await conn.execute(sql)
            return await cur.fetchall()

        async with self._using, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            meta = dict(await rows("SELECT key, value FROM meta"))
            commits = [CommitInfo(sha=r[0], branch=r[1], author=r[2], subject=r[3], time=r[4], skipped=r[5])
                       for r in await rows("SELECT sha, branch, author, subject, time, skipped FROM commits"
                                           " ORDER BY seen_at, ord")]
            tips = dict(await rows("SELECT branch, sha FROM tips"))
            jobs = [(_job_dec.decode(b), pr) for b, pr in await rows("SELECT body, priority FROM jobs ORDER BY id")]
            attempts = [_attempt_dec.decode(b)
                        for (b,) in await rows("SELECT body FROM attempts ORDER BY job_id, attempt")]
            bisections = [(i, _bisection_dec.decode(b), _ids_dec.decode(m))
                          for i, b, m in await rows("SELECT id, body, made FROM bisections ORDER BY id")]
            newest = (await rows("SELECT COALESCE(MAX(seq), 0) FROM events"))[0][0]
            pruned = int(meta.get(PRUNED_THROUGH, 0))  # retention deletes events, never their numbers
            last = max(newest, pruned)
        return Snapshot(meta=meta, commits=commits, tips=tips, jobs=jobs, attempts=attempts, last_seq=last,
                        bisections=bisections)

    async def _check_lease(self, conn: psycopg.AsyncConnection) -> None:
        """In the caller's transaction: that the lease is still ours, held so until the transaction ends (a
        standby's takeover waits for it), or LeaseLost."""
        cur = await conn.execute("SELECT epoch, holder FROM leader WHERE id = 1 FOR SHARE")
        row = await cur.fetchone()
        if row is None or row[0] != self.epoch or row[1] != self.holder:
            raise LeaseLost(f"the lease is held by another dispatcher now (epoch {row[0] if row else '-'})")

    async def save(self, batch: Batch) -> None:
        """Make ``batch`` durable in one transaction, if we still hold the lease (else LeaseLost, also when the
        connection broke: what we hold may be another's by now, and a standby starts afresh)."""
        try:
            await self._save(batch)
        except _psycopg().OperationalError as exc:
            raise LeaseLost(f"the connection to {self.path} broke: {exc}") from exc

    async def _save(self, batch: Batch) -> None:
        conn = self._db()
        async with self._using, conn.transaction():
            await self._check_lease(conn)
            async with conn.cursor() as c:
                if batch.meta:
                    await c.executemany("INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE"
                                        " SET value = excluded.value", list(batch.meta.items()))
                if batch.commits:
                    await c.executemany(
                        "INSERT INTO commits (sha, branch, author, subject, time, seen_at, skipped)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (sha) DO NOTHING",
                        [(m.sha, m.branch, m.author, m.subject, m.time, seen, m.skipped) for m, seen in batch.commits])
                for branch, sha in batch.tips.items():
                    if sha is None:
                        await c.execute("DELETE FROM tips WHERE branch = %s", (branch,))
                    else:
                        await c.execute("INSERT INTO tips VALUES (%s, %s) ON CONFLICT (branch) DO UPDATE"
                                        " SET sha = excluded.sha", (branch, sha))
                if batch.jobs:
                    await c.executemany(
                        "INSERT INTO jobs VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE"
                        " SET commit_sha = excluded.commit_sha, priority = excluded.priority, body = excluded.body",
                        [(j.id, j.commit, pr, _enc.encode(j)) for j, pr in batch.jobs.values()])
                if batch.attempts:
                    await c.executemany(
                        "INSERT INTO attempts VALUES (%s, %s, %s) ON CONFLICT (job_id, attempt) DO UPDATE"
                        " SET body = excluded.body",
                        [(a.job_id, a.attempt, _enc.encode(a)) for a in batch.attempts.values()])
                if batch.bisections:
                    await c.executemany(
                        "INSERT INTO bisections VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE"
                        " SET body = excluded.body, made = excluded.made",
                        [(i, _enc.encode(b), _enc.encode(made)) for i, (b, made) in batch.bisections.items()])
                if batch.events:
                    await c.executemany("INSERT INTO events VALUES (%s, %s, %s)",
                                        [(e.seq, e.ts, _enc.encode(e)) for e in batch.events])
            for tests in batch.tests:
                await testrecord.write(_Pg(conn), tests)

    async def read_events(self, seq: int, limit: int) -> list[Event]:
        conn = self._db()
        async with self._using:
            cur = await conn.execute("SELECT body FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
                                     (seq, limit))
            rows = await cur.fetchall()
        return [_event_dec.decode(b) for (b,) in rows]

    async def prune_events_before(self, before: float, limit: int) -> tuple[int, int]:
        """As ``store.Store.prune_events``: up to ``limit`` of the oldest events older than ``before``, fenced."""
        conn = self._db()
        async with self._using, conn.transaction():
            await self._check_lease(conn)
            cur = await conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE ts < %s ORDER BY seq LIMIT %s)"
                " RETURNING seq", (before, limit))
            seqs = [seq for (seq,) in await cur.fetchall()]
            if not seqs:
                return 0, 0
            await conn.execute("INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value ="
                               " GREATEST(meta.value::bigint, excluded.value::bigint)::text",
                               (PRUNED_THROUGH, str(max(seqs))))
        return len(seqs), max(seqs)

    async def forget_job_rows(self, job_ids: list[int]) -> None:
        """Delete these jobs' test results (their logs were deleted: ``PgJobLogs.delete``), fenced."""
        conn = self._db()
        if not job_ids:
            return
        async with self._using, conn.transaction():
            await self._check_lease(conn)
            await testrecord.forget(_Pg(conn), job_ids)

    async def test_report(self, job_id: int, failed_only: bool, history: int) -> list[TestReport] | None:
        return await self._read(testrecord.job_tests, job_id, failed_only, history)

    async def test_history(self, text: str, branch: str, limit: int) -> tuple[str, str, list[HistoryEntry]]:
        return await self._read(testrecord.history, text, branch, limit)

    async def flaky_tests(self) -> list[FlakyTest]:
        return await self._read(testrecord.flaky)

    async def _read(self, question: Callable[..., Any], *args: Any) -> Any:
        """``question(db, *args)`` from one snapshot of the record (a job stored meanwhile is in it whole or not
        at all). Read-only: a standby answers too."""
        conn = self._db()
        async with self._using, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return await question(_Pg(conn), *args)

    async def size_bytes(self) -> int:
        conn = self._db()
        async with self._using:
            cur = await conn.execute("SELECT pg_database_size(current_database())")
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    def _db(self) -> psycopg.AsyncConnection:
        """The record's connection; LeaseLost once released (a request that came in as this dispatcher stepped
        down is answered as a standby answers, not with an internal error)."""
        if self._conn is None:
            raise LeaseLost("this dispatcher stepped down: it no longer reads the record")
        return self._conn

    async def release(self) -> None:
        for conn in (self._conn, self._lease_conn):
            if conn is not None:
                await conn.close()
        self._conn = self._lease_conn = None


class _Pg:
    """A connection as ``testrecord`` asks it: its ``?`` marks as psycopg's, and rows added by COPY."""

    position = "ord"
    like = "ILIKE"  # SQLite's LIKE ignores the case of ASCII letters

    def __init__(self, conn: psycopg.AsyncConnection):
        self.conn = conn

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = await self.conn.execute(sql.replace("?", "%s"), params)
        return await cur.fetchall()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.conn.execute(sql.replace("?", "%s"), params)

    async def fill(self, table: str, rows: list[tuple]) -> None:
        async with self.conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN") as copy:
            for row in rows:
                await copy.write_row(row)


class PgJobLogs:
    """Job logs as chunks in the database (the same interface as ``dispatcher.joblogs.JobLogs``), so a dispatcher
    that takes over serves and continues the logs of the one before. A chunk is keyed by its offset: the same
    bytes sent again (a runner resending after a takeover) are not stored twice."""

    def __init__(self, dsn: str, holder: str):
        self.dsn = dsn
        self.holder = holder  # the dispatcher's name: a successor ends this session too (``_session_name``)
        self._conn: psycopg.AsyncConnection | None = None
        self._size: dict[int, int] = {}  # bytes stored per job written to since we started
        self._truncating: dict[int, asyncio.Task] = {}

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await _connect(self.dsn, self.holder)
        return self._conn

    async def sizes(self, job_ids: list[int]) -> dict[int, int]:
        """How much output each job has stored: a returning runner resumes from there."""
        if not job_ids:
            return {}
        conn = await self._connection()
        cur = await conn.execute(
            'SELECT job_id, COALESCE(MAX("offset" + length(data)), 0) FROM log_chunks WHERE job_id = ANY(%s)'
            " GROUP BY job_id", (job_ids,))
        stored: dict[int, int] = dict(await cur.fetchall())
        sizes = {job_id: stored.get(job_id, 0) for job_id in job_ids}
        self._size.update(sizes)
        return sizes

    async def write(self, job_id: int, data: bytes, stalled: Callable[[], None]) -> None:
        """Append to the job's log; while the database cannot take it, retry every second (calling ``stalled``)."""
        if job_id in self._truncating:
            await self._truncating.pop(job_id)
        while True:
            try:
                if job_id not in self._size:
                    await self.sizes([job_id])
                conn = await self._connection()
                await conn.execute('INSERT INTO log_chunks VALUES (%s, %s, %s) ON CONFLICT DO NOTHING',
                                   (job_id, self._size[job_id], data))
                self._size[job_id] += len(data)
                return
            except _psycopg().Error as exc:
                log.error("cannot store the log of job %s (%s); retrying", job_id, exc)
                self._conn = None
                await asyncio.sleep(1.0)
            stalled()

    async def read(self, job_id: int, offset: int, size: int, end: int | None = None) -> bytes:
        """Up to ``size`` bytes of the job's log from ``offset``, and none past ``end`` (None: up to its end)."""
        limit = size if end is None else max(0, min(size, end - offset))
        if not limit:
            return b""
        conn = await self._connection()
        cur = await conn.execute(
            'SELECT "offset", data FROM log_chunks WHERE job_id = %s AND "offset" + length(data) > %s'
            ' AND "offset" < %s ORDER BY "offset"', (job_id, offset, offset + limit))
        out = bytearray()
        for start, data in await cur.fetchall():
            out += bytes(data)[max(0, offset - start):]
            offset = max(offset, start + len(data))
        return bytes(out[:limit])

    async def delete(self, job_ids: list[int]) -> int:
        """Delete these jobs' logs (retention); the bytes that freed."""
        conn = await self._connection()
        cur = await conn.execute("WITH gone AS (DELETE FROM log_chunks WHERE job_id = ANY(%s) RETURNING data)"
                                 " SELECT COALESCE(SUM(length(data)), 0) FROM gone", (job_ids,))
        row = await cur.fetchone()
        for job_id in job_ids:
            self._size.pop(job_id, None)
        return int(row[0]) if row else 0

    def close(self, job_id: int) -> None:
        """Nothing is held open per job; forget its size (a rerun starts from what is stored)."""
        self._size.pop(job_id, None)

    def truncate(self, job_id: int) -> None:
        self._size[job_id] = 0
        self._truncating[job_id] = asyncio.ensure_future(self._delete(job_id))

    async def _delete(self, job_id: int) -> None:
        try:
            conn = await self._connection()
            await conn.execute("DELETE FROM log_chunks WHERE job_id = %s", (job_id,))
        except _psycopg().Error as exc:
            log.error("cannot empty the log of job %s: %s", job_id, exc)

    async def stop(self, patience: float = 2.0) -> None:
        """Finish what was asked, waiting at most ``patience`` for a database that may be out of reach."""
        if self._truncating:
            await asyncio.wait(list(self._truncating.values()), timeout=patience)
        if self._conn is not None:
            await asyncio.wait([asyncio.ensure_future(self._conn.close())], timeout=patience)
            self._conn = None

"""The PostgreSQL store and its lease, on a real private server: who leads, takeover, fencing, the record."""

from __future__ import annotations

import asyncio
import time

import pytest

from tuici.errors import LeaseLost
from tuici.pgstore import PgStore, migrate, migrations, redact
from tuici.store import Batch
from tuici.wire import AttemptInfo, CommitInfo, Event, JobInfo


def run(coro):
    return asyncio.run(coro)


async def _store(dsn: str, name: str, lease: float = 2.0) -> PgStore:
    store = PgStore(dsn, holder=name, address=f"{name}.example:7000", lease_seconds=lease)
    await store.connect()
    return store


async def _release_all(*stores: PgStore) -> None:
    """Each store released, whatever the test did to its connections (one of them ended by another)."""
    for store in stores:
        try:
            await store.release()
        except Exception:  # noqa: BLE001 - a connection the server ended: nothing left to release
            pass


def test_one_leads_the_others_stand_by(pg_dsn):
    async def main():
        a, b, c = [await _store(pg_dsn, n) for n in "abc"]
        try:
            assert await a.try_lead() == 1
            assert await b.try_lead() is None
            assert await c.try_lead() is None
            assert await b.leader() == ("a", "a.example:7000", 1)
            assert await a.renew()
        finally:
            for s in (a, b, c):
                await s.release()
    run(main())


def test_killed_leaders_session_frees_the_lease_at_once(pg_dsn):
    """A dispatcher killed outright: its connections close, its advisory lock goes, a standby leads at once
    (long before the lease would expire), and the old one's writes are refused."""
    async def main():
        a, b = await _store(pg_dsn, "a", lease=60), await _store(pg_dsn, "b", lease=60)
        try:
            assert await a.try_lead() == 1
            await a._lease_conn.close()  # what the server sees when a's process dies
            epoch = None
            deadline = time.monotonic() + 10
            while epoch is None and time.monotonic() < deadline:
                epoch = await b.try_lead()
                await asyncio.sleep(0.05)
            assert epoch == 2
            with pytest.raises(LeaseLost):
                await a.save(Batch(meta={"k": "v"}))
            cur = await b._conn.execute("SELECT count(*) FROM meta")
            assert (await cur.fetchone())[0] == 0
        finally:
            await a._conn.close()
            await b.release()
    run(main())


def test_expired_lease_is_taken_and_the_stale_session_ended(pg_dsn):
    import psycopg

    """A leader whose machine vanished keeps its session (and lock) on the server; once its lease expires a
    standby takes over, ends that session, and holds the lock itself."""
    async def main():
        a, b = await _store(pg_dsn, "a", lease=0.5), await _store(pg_dsn, "b", lease=0.5)
        try:
            assert await a.try_lead() == 1
            assert await b.try_lead() is None  # a's lease is live and its session holds the lock
            await asyncio.sleep(0.8)  # a stops renewing (stopped, or cut off)
            assert await b.try_lead() == 2
            with pytest.raises(psycopg.OperationalError):  # b ended a's stale session
                await a.renew()
            with pytest.raises(LeaseLost):
                await a.save(Batch(meta={"k": "v"}))
        finally:
            await _release_all(a, b)
    run(main())


def test_record_round_trip_and_events_after(pg_dsn):
    async def main():
        a = await _store(pg_dsn, "a")
        try:
            await a.try_lead()
            job = JobInfo(id=1, commit="c" * 40, branch="main", state="queued", priority=3)
            batch = Batch(
                commits=[(CommitInfo(sha="c" * 40, branch="main", author="Ann", subject="first", time=1.0), 2.0)],
                tips={"main": "c" * 40},
                jobs={1: (job, 3)},
                attempts={(1, 1): AttemptInfo(job_id=1, attempt=1, runner="r1", started_at=3.0)},
                events=[Event(seq=n, ts=float(n), kind="job.queued", job=job) for n in (1, 2, 3)],
                meta={"repo_url": "file:///x"},
            )
            await a.save(batch)
            # the same again is no error (upserts), as a retried batch must be
            job.state = "running"
            await a.save(Batch(jobs={1: (job, 3)}, tips={"main": None}))
            snap = await a.load()
            assert [c.subject for c in snap.commits] == ["first"]
            assert snap.tips == {}
            assert [(j.state, pr) for j, pr in snap.jobs] == [("running", 3)]
            assert snap.attempts[0].runner == "r1"
            assert snap.last_seq == 3 and snap.meta == {"repo_url": "file:///x"}
            assert [e.seq for e in await a.read_events(1, 10)] == [2, 3]
        finally:
            await a.release()
    run(main())


def test_a_released_store_answers_lease_lost_not_an_internal_error(pg_dsn):
    """A status asked as the dispatcher steps down reaches a store already released: LeaseLost, which the
    server answers as a standby does (an AssertionError there closed the client's connection with an internal
    error, seen in the group's SIGSTOP test)."""
    async def main():
        a = await _store(pg_dsn, "a")
        await a.try_lead()
        await a.release()
        for question in (a.size_bytes(), a.read_events(0, 10), a.flaky_tests(), a.leader(), a.load()):
            with pytest.raises(LeaseLost, match="stepped down"):
                await question
        with pytest.raises(LeaseLost):
            await a.save(Batch(tips={"main": None}))
    run(main())


def test_migrations_run_once_when_dispatchers_start_together(pg_dsn):
    import psycopg

    async def main():
        conns = [await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) for _ in range(4)]
        try:
            versions = await asyncio.gather(*(migrate(c) for c in conns))
            assert set(versions) == {migrations()[-1][0]}
            cur = await conns[0].execute("SELECT count(*) FROM tuici_schema")
            assert (await cur.fetchone())[0] == len(migrations())
        finally:
            for c in conns:
                await c.close()
    run(main())


def test_redact_hides_the_password():
    assert redact("postgresql://ci:s3cret@db.example:5432/tuici") == "postgresql://ci:***@db.example:5432/tuici"
    assert redact("postgresql://db.example/tuici") == "postgresql://db.example/tuici"


def test_retention_deletes_old_events_and_logs_but_never_their_numbers(pg_dsn):
    from tuici.pgstore import PgJobLogs

    async def main():
        a = await _store(pg_dsn, "a")
        logs = PgJobLogs(pg_dsn, "a")
        try:
            await a.try_lead()
            await a.save(Batch(events=[Event(seq=n, ts=float(n), kind="job.queued") for n in range(1, 6)]))
            assert await a.prune_events_before(3.5, 2) == (2, 2)  # a slice at a time, oldest first
            assert await a.prune_events_before(3.5, 10) == (1, 3)
            assert await a.prune_events_before(3.5, 10) == (0, 0)
            assert [e.seq for e in await a.read_events(0, 10)] == [4, 5]
            await a.save(Batch(events=[]))
            await a.prune_events_before(100.0, 10)
            assert (await a.load()).last_seq == 5  # every event gone, the next is still 6
            for chunk in (b"one\n", b"two\n"):
                await logs.write(7, chunk, stalled=lambda: None)
            assert await logs.read(7, 0, 100) == b"one\ntwo\n"
            assert await logs.delete([7]) == 8
            assert await logs.read(7, 0, 100) == b""
            assert await a.size_bytes() > 0
        finally:
            await logs.stop()
            await a.release()
    run(main())


def _take_over(store: PgStore, within: float = 20.0):
    """Have ``store`` try the lease until it leads (its epoch), each try given at most 15 s."""
    async def main():
        epoch, deadline = None, time.monotonic() + within
        while epoch is None and time.monotonic() < deadline:
            epoch = await asyncio.wait_for(store.try_lead(), 15)
            await asyncio.sleep(0.1)
        return epoch
    return main()


def test_a_leader_lost_in_the_middle_of_a_write_does_not_hold_up_the_takeover(pg_dsn):
    """Its session, idle inside a transaction that holds the lease row's share lock (the machine vanished there),
    is ended by the standby once the lease has expired, and the standby takes over; found by the failover bench,
    where a takeover after a cut link waited for ever."""
    async def main():
        a, b = await _store(pg_dsn, "a", lease=1.0), await _store(pg_dsn, "b", lease=1.0)
        try:
            assert await a.try_lead() == 1
            await a._conn.execute("BEGIN")
            await a._conn.execute("SELECT 1 FROM leader WHERE id = 1 FOR SHARE")  # and then nothing more
            assert await _take_over(b) == 2
        finally:
            await _release_all(a, b)
    run(main())


def test_test_results_answer_as_sqlites_do(pg_dsn, tmp_path):
    """The same jobs written to both stores (as the journal writes them: with their result, in its transaction)
    give the same answers to every question: a job's tests with where each broke or was fixed and its history
    strip, a test's history, the flaky tests; and retention forgets a job's results in both, fenced here."""
    from tuici import wire as p
    from tuici.store import JobTests, Store
    from tuici.testrecord import UnknownTest

    sha = [f"{n:040x}" for n in range(11)]
    commits = Batch(commits=[(CommitInfo(sha=sha[n], branch="main"), float(n)) for n in range(1, 11)])
    failure = {"message": "assert 1 == 2", "details": "Traceback\n  bad\0byte"}  # a NUL PostgreSQL refuses in text
    jobs = [
        (1, sha[1], {"t_a": "passed", "t_b": "failed", "t_flaky": "passed", "T_Case": "skipped"}),
        (2, sha[2], {"t_a": "passed", "t_b": "passed", "t_x": "xfailed"}),
        (5, sha[5], {"t_a": "failed", "t_b": "passed", "t_new": "error"}),
        (7, sha[7], {"t_a": "failed", "t_b": "failed"}),
        (6, sha[6], {"t_a": "failed", "t_b": "passed"}),  # finished after commit 7's job
        (8, sha[7], {"t_a": "passed", "t_b": "failed"}),  # a rerun of commit 7: t_a is flaky there
        (9, sha[9], {"t_a": "passed", "t_b": "passed", "t_flaky": "passed"}),
    ]
    batches = [Batch(tests=[JobTests(job_id, commit, "main", float(job_id), [
        p.TestCase(name=name, outcome=outcome, flaky=name == "t_flaky" and job_id == 9,
                   **(failure if outcome == "failed" else {}))
        for name, outcome in outcomes.items()])]) for job_id, commit, outcomes in jobs]

    async def questions(store) -> list:
        answers: list = [await store.test_report(job_id, failed_only, history)
                         for job_id, _, _ in jobs for failed_only in (False, True) for history in (0, 2, 20)]
        answers.append(await store.test_report(99, False, 0))
        for text, branch, limit in [("t_a", "", 0), ("t_b", "main", 2), ("new", "", 0), ("t_case", "", 0),
                                    ("t_", "", 0), ("zzz", "", 0)]:
            try:
                answers.append(await store.test_history(text, branch, limit))
            except UnknownTest as exc:
                answers.append(str(exc))
        answers.append(await store.flaky_tests())
        return answers

    async def sqlite_answers() -> tuple[list, list]:
        store = Store(tmp_path / "tuici.db")
        await store.load()
        try:
            for batch in [commits, *batches]:
                await store.save(batch)
            before = await questions(store)
            await store.forget_job_rows([8, 9])
            return before, await questions(store)
        finally:
            await store.release()

    async def pg_answers() -> tuple[list, list]:
        a, b = await _store(pg_dsn, "a"), await _store(pg_dsn, "b")
        try:
            await a.try_lead()
            for batch in [commits, *batches]:
                await a.save(batch)
            before = await questions(b)  # a standby reads them too
            await a.forget_job_rows([8, 9])
            after = await questions(a)
            await a._lease_conn.close()  # a dies; b leads; a can no longer forget anything
            epoch, deadline = None, time.monotonic() + 10
            while epoch is None and time.monotonic() < deadline:
                epoch = await b.try_lead()
                await asyncio.sleep(0.05)
            with pytest.raises(LeaseLost):
                await a.forget_job_rows([1])
            assert await b.test_report(1, False, 0) is not None
            return before, after
        finally:
            await a._conn.close()
            await b.release()

    expected, pg = run(sqlite_answers()), run(pg_answers())
    assert pg == expected
    before, after = expected
    reports = {r.name: r for r in before[2] or []}  # job 1, all its tests, history 20
    assert reports["t_b"].outcome == "failed" and reports["t_b"].details == "Traceback\n  bad\ufffdbyte"
    latest = {r.name: r for r in before[5 * 6 + 2] or []}  # job 8
    assert latest["t_b"].broken_by == p.Change(commit=sha[7], since=sha[7], after=sha[6])
    assert latest["t_a"].fixed_by == p.Change(commit=sha[7], since=sha[7], after=sha[6])
    assert latest["t_b"].history == "F...F"
    *_, case, ambiguous, unknown, flaky = before
    assert case[0] == "T_Case" and "tests match" in ambiguous and "no test" in unknown  # case as SQLite's LIKE
    assert {t.name for t in flaky} == {"t_a", "t_flaky"}
    assert after[5 * 6] is None and after[-1] == []  # jobs 8 and 9 forgotten: no flaky test left
def test_a_leader_lost_after_a_pipelined_write_does_not_hold_up_the_takeover(pg_dsn):
    """Lost in its transaction right after an ``executemany`` (which psycopg pipelines: the Flush that follows
    the Sync disarms the server's idle-in-transaction timer, so no server timeout ends the session, though it
    shows as idle in its transaction), the leader's session holds the lease row's share lock, and a takeover
    waited for ever: the failover bench's cut-link rounds, now and then. The standby's first try, made while the
    lease still runs, waits for the row a lease at most; a later one ends the session once the lease has
    expired, with every other session of the old leader (its job logs' too)."""
    from tuici.pgstore import PgJobLogs

    async def count(conn, sql: str, *args) -> int:
        cur = await conn.execute(sql, args)
        return (await cur.fetchone())[0]

    async def main():
        a, b = await _store(pg_dsn, "a", lease=1.0), await _store(pg_dsn, "b", lease=1.0)
        logs = PgJobLogs(pg_dsn, "a")
        try:
            assert await a.try_lead() == 1
            await logs.write(1, b"out\n", lambda: None)
            cur = await b._conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s",
                                        (a._conn.pgconn.backend_pid,))
            name = (await cur.fetchone())[0]
            theirs = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            assert await count(b._conn, theirs, name) == 3
            await a._conn.execute("BEGIN")  # what ``save`` does, and then the machine vanishes
            await a._check_lease(a._conn)
            async with a._conn.cursor() as c:
                await c.executemany("INSERT INTO meta VALUES (%s, %s)", [("k1", "v"), ("k2", "v")])
            assert await _take_over(b) == 2
            for _ in range(200):
                if await count(b._conn, theirs, name) == 0:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("sessions of the old leader are left")
            assert await count(b._conn, "SELECT count(*) FROM meta WHERE key LIKE 'k_'") == 0
        finally:
            await logs.stop()
            await _release_all(a, b)
    run(main())

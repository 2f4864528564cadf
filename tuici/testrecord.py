"""A store's per-test results, the same in SQLite (``store.Store``) and PostgreSQL (``pgstore.PgStore``).

A finished job's test cases are written with its result, in the same transaction: a test's name once
(``test_names``), then per job one small row each (``job_tests``), the text of failures apart
(``test_failures``), and the tests seen flaky (``flaky``). Where a test broke or was fixed is not stored but read
off the branch's tested commits (``test_jobs``) when asked for, by the rules of ``testcases``: a job that
finishes late, or one a bisect adds, is taken into account as soon as it is there.

The SQL here is written once for both (``?`` marks a parameter; a ``Db`` runs it in its own dialect). Each
function is a coroutine: PostgreSQL's ``Db`` awaits its server, SQLite's answers at once, on the store thread,
where ``run_now`` takes the coroutine to its end without an event loop.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any, Collection, Coroutine, Protocol, Sequence, TypeVar

from . import testcases
from .testcases import Tested
from .wire import FlakyTest, HistoryEntry, TestOutcome, TestReport

if TYPE_CHECKING:
    from .store import JobTests

# How an outcome is stored: these codes are on disk, so the order never changes.
OUTCOMES: tuple[TestOutcome, ...] = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
CODES = {outcome: code for code, outcome in enumerate(OUTCOMES)}
FAILING_CODES = "(1, 2)"  # failed, error (testcases.FAILING), as SQL
PASSING_CODES = "(0, 5)"  # passed, xpassed (testcases.PASSING)
MAX_WALK = 200  # tested commits a branch's history is walked back to find where each failing test broke
MAX_STRIPS = 500  # failing and flaky tests of a job given a history strip, at most
PARAMS = 500  # ids per IN (...) list
NO_LIMIT = 2**62  # a LIMIT that keeps every row (SQLite takes no NULL for it)
# Rows that belong to one job and go when retention deletes its log: the job's per-test results. Each table has a
# ``job_id`` column.
JOB_DETAIL_TABLES: tuple[str, ...] = ("job_tests", "test_failures", "flaky", "test_jobs")

T = TypeVar("T")


class UnknownTest(LookupError):
    """A test name that names no test, or more than one (the message says which)."""


class Db(Protocol):
    """One store's connection, inside the caller's transaction (for a write) or not (a read)."""

    position: str  # the ``commits`` column that orders a branch's commits (later ones higher)
    like: str  # the LIKE that matches a part of a test's name as SQLite's LIKE does: ASCII case-insensitive

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    async def fill(self, table: str, rows: list[tuple]) -> None:
        """Add ``rows`` to ``table`` (all its columns, in order), as fast as the store can take them."""


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits (every await answered at once, as SQLite's ``Db`` does)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a store coroutine waited for something: it must run where it is awaited")


def _text(value: str) -> str | None:
    """A text as stored: None for none; a NUL (which PostgreSQL refuses in text) as U+FFFD."""
    return value.replace("\0", "\ufffd") if value else None


async def write(db: Db, tests: JobTests) -> None:
    """A job's cases, and the tests seen flaky by them: passed on retry in this job, or failing here and
    passing in another job of the same commit (a rerun), or the other way round. Within the caller's
    transaction."""
    job = tests.job_id
    await forget(db, [job])
    failing = sum(1 for case in tests.cases if case.outcome in testcases.FAILING)
    await db.execute(f"INSERT INTO test_jobs VALUES (?, ?, ?, COALESCE((SELECT {db.position} FROM commits "
                     "WHERE sha = ?), 0), ?, ?)", (job, tests.commit, tests.branch, tests.commit, failing, tests.at))
    await db.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (name TEXT NOT NULL, outcome INTEGER NOT NULL, "
                     "duration DOUBLE PRECISION NOT NULL, flaky BOOLEAN NOT NULL, message TEXT, details TEXT)")
    await db.execute("DELETE FROM incoming")
    await db.fill("incoming", [(_text(c.name), CODES[c.outcome], c.duration_s, c.flaky, _text(c.message),
                                _text(c.details)) for c in tests.cases])
    # (SQLite reads an ON CONFLICT after a SELECT's FROM as a join's ON but for a WHERE between them.)
    await db.execute("INSERT INTO test_names (name) SELECT DISTINCT name FROM incoming WHERE true "
                     "ON CONFLICT (name) DO NOTHING")
    named = "FROM incoming i JOIN test_names n ON n.name = i.name"  # a name sent twice keeps its first case
    await db.execute(f"INSERT INTO job_tests SELECT ?, n.id, i.outcome, i.duration, i.flaky {named} WHERE true "
                     "ON CONFLICT (job_id, test_id) DO NOTHING", (job,))
    await db.execute(f"INSERT INTO test_failures SELECT ?, n.id, i.message, i.details {named} "
                     "WHERE i.message IS NOT NULL OR i.details IS NOT NULL ON CONFLICT (job_id, test_id) DO NOTHING",
                     (job,))
    await db.execute("DELETE FROM incoming")
    await db.execute("INSERT INTO flaky SELECT test_id, job_id, ?, ? FROM job_tests WHERE job_id = ? AND flaky "
                     "ON CONFLICT (test_id, job_id) DO NOTHING", (tests.commit, tests.at, job))
    for (other,) in await db.rows("SELECT job_id FROM test_jobs WHERE commit_sha = ? AND job_id != ?",
                                  (tests.commit, job)):
        await db.execute(
            "INSERT INTO flaky SELECT t.test_id, t.job_id, ?, ? FROM job_tests t "
            "JOIN job_tests o ON o.job_id = ? AND o.test_id = t.test_id WHERE t.job_id = ? AND ("
            f"(t.outcome IN {FAILING_CODES} AND o.outcome IN {PASSING_CODES}) OR "
            f"(t.outcome IN {PASSING_CODES} AND o.outcome IN {FAILING_CODES})) "
            "ON CONFLICT (test_id, job_id) DO NOTHING",
            (tests.commit, tests.at, other, job))


async def forget(db: Db, job_ids: list[int]) -> None:
    """Delete the rows of ``JOB_DETAIL_TABLES`` that belong to these jobs, within the caller's transaction."""
    for start in range(0, len(job_ids), PARAMS):
        chunk = job_ids[start:start + PARAMS]
        marks = ",".join("?" * len(chunk))
        for table in JOB_DETAIL_TABLES:
            await db.execute(f"DELETE FROM {table} WHERE job_id IN ({marks})", chunk)


# ---------------------------------------------------------------------- read


async def job_tests(db: Db, job_id: int, failed_only: bool, history: int) -> list[TestReport] | None:
    """The job's test cases, failures first, each failing one with where it broke, each passing one that failed
    on the previous tested commit with where it was fixed, and the failing and flaky ones with their last
    ``history`` outcomes on the branch; None if the job has no test results."""
    found = await db.rows("SELECT commit_sha, branch, position FROM test_jobs WHERE job_id = ?", (job_id,))
    if not found:
        return None
    sha, branch, position = found[0]
    this = Tested(sha, job_id, position)
    only = f" AND t.outcome IN {FAILING_CODES}" if failed_only else ""
    cases = {
        test_id: TestReport(name=name, outcome=OUTCOMES[outcome], duration_s=duration, flaky=bool(flaky))
        for test_id, name, outcome, duration, flaky in await db.rows(
            "SELECT t.test_id, n.name, t.outcome, t.duration, t.flaky FROM job_tests t "
            f"JOIN test_names n ON n.id = t.test_id WHERE t.job_id = ?{only}", (job_id,))
    }
    for test_id, message, details in await db.rows(
            "SELECT test_id, message, details FROM test_failures WHERE job_id = ?", (job_id,)):
        case = cases.get(test_id)
        if case is not None:
            case.message, case.details = message or "", details or ""
    earlier = await _tested_before(db, branch, this)
    failing = [key for key, case in cases.items() if case.outcome in testcases.FAILING]
    passing = [key for key, case in cases.items() if case.outcome not in testcases.FAILING]
    failed_at = await _failed_at(db, failing, earlier, bool(passing))
    between = await _between(db, branch, [this, *(tested for tested, _ in earlier)])
    walk = ((tested, failed_at.get(tested.job, frozenset())) for tested, _ in earlier)
    for key, change in testcases.broken_by(failing, this, walk, between).items():
        cases[key].broken_by = change
    previous = (earlier[0][0], failed_at.get(earlier[0][0].job, frozenset())) if earlier else None
    for key, change in testcases.fixed_by(passing, this, previous, between).items():
        cases[key].fixed_by = change
    if history:
        shown = sorted((key for key, case in cases.items() if case.outcome in testcases.FAILING or case.flaky),
                       key=lambda key: testcases.order_key(cases[key]))[:MAX_STRIPS]
        steps = [await _outcomes(db, tested.job, shown) for tested in [this, *(t for t, _ in earlier[:history - 1])]]
        for key, strip in testcases.history_strip(shown, steps).items():
            cases[key].history = strip
    return sorted(cases.values(), key=testcases.order_key)


async def _tested_before(db: Db, branch: str, this: Tested) -> list[tuple[Tested, int]]:
    """The branch's tested commits before ``this`` one, newest first, each by its latest job with results (and
    how many tests failed in it); ``MAX_WALK`` at most."""
    found: list[tuple[Tested, int]] = []
    seen: set[str] = set()
    for job_id, sha, position, failing in await db.rows(
            "SELECT job_id, commit_sha, position, failing FROM test_jobs WHERE branch = ? AND position < ? "
            "ORDER BY position DESC, job_id DESC", (branch, this.position)):
        if sha not in seen:
            seen.add(sha)
            found.append((Tested(sha, job_id, position), failing))
            if len(found) >= MAX_WALK:
                break
    return found


async def _failed_at(db: Db, failing: Collection[int], earlier: list[tuple[Tested, int]],
                     fixes: bool) -> dict[int, frozenset[int]]:
    """The tests that failed in the earlier jobs the walk back over them reads (``testcases.broken_by``: as far
    as a test failing here failed all along; the previous one too where ``fixes`` are asked for), a job at a
    time, none read where a job had no failure."""
    read: dict[int, frozenset[int]] = {}
    streaks = set(failing)
    for n, (tested, count) in enumerate(earlier):
        if not streaks and not (n == 0 and fixes):
            break
        if count:
            read[tested.job] = frozenset(test_id for (test_id,) in await db.rows(
                f"SELECT test_id FROM job_tests WHERE job_id = ? AND outcome IN {FAILING_CODES}", (tested.job,)))
        streaks &= read.get(tested.job, frozenset())
    return read


async def _between(db: Db, branch: str, tested: list[Tested]) -> testcases.Between:
    """How many commits of the branch lie strictly between two of ``tested`` (newest first): the untested ones
    between neighbours (the walk goes over every tested commit in turn), read in one query."""
    if len(tested) < 2:
        return lambda after, since: 0
    inside = sorted(position for (position,) in await db.rows(
        f"SELECT {db.position} FROM commits WHERE branch = ? AND {db.position} > ? AND {db.position} < ?",
        (branch, tested[-1].position, tested[0].position)))

    def between(after: Tested, since: Tested) -> int:
        return max(0, bisect.bisect_left(inside, since.position) - bisect.bisect_right(inside, after.position))
    return between


async def _outcomes(db: Db, job_id: int, test_ids: list[int]) -> dict[int, TestOutcome]:
    found: dict[int, TestOutcome] = {}
    for start in range(0, len(test_ids), PARAMS):
        chunk = test_ids[start:start + PARAMS]
        found.update((test_id, OUTCOMES[outcome]) for test_id, outcome in await db.rows(
            f"SELECT test_id, outcome FROM job_tests WHERE job_id = ? AND test_id IN ({','.join('?' * len(chunk))})",
            (job_id, *chunk)))
    return found


async def history(db: Db, text: str, branch: str, limit: int) -> tuple[str, str, list[HistoryEntry]]:
    """The test ``text`` names (see ``find_test``): its name, the branch (given, or where it last ran), and its
    outcomes there, newest first."""
    test_id, name = await find_test(db, text)
    if not branch:
        found = await db.rows("SELECT j.branch FROM test_jobs j JOIN job_tests t ON t.job_id = j.job_id "
                              "AND t.test_id = ? ORDER BY j.job_id DESC LIMIT 1", (test_id,))
        branch = found[0][0] if found else ""
    entries = [
        HistoryEntry(commit=sha, job=job_id, outcome=OUTCOMES[outcome], duration_s=duration, flaky=bool(flaky))
        for sha, job_id, outcome, duration, flaky in await db.rows(
            "SELECT j.commit_sha, j.job_id, t.outcome, t.duration, t.flaky FROM test_jobs j "
            "JOIN job_tests t ON t.job_id = j.job_id AND t.test_id = ? WHERE j.branch = ? "
            "ORDER BY j.position DESC, j.job_id DESC LIMIT ?", (test_id, branch, limit or NO_LIMIT))
    ]
    return name, branch, entries


async def find_test(db: Db, text: str) -> tuple[int, str]:
    """The one test ``text`` names: its full name, or a part of one name alone (preferring a name that ends
    with it after ``::`` or ``/``); ``UnknownTest`` says which match, if not exactly one."""
    exact = await db.rows("SELECT id, name FROM test_names WHERE name = ?", (text,))
    if exact:
        return exact[0][0], exact[0][1]
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    matches = await db.rows(f"SELECT id, name FROM test_names WHERE name {db.like} ? ESCAPE '\\' ORDER BY name "
                            "LIMIT 1000", (pattern,))
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


async def flaky(db: Db) -> list[FlakyTest]:
    """Every test seen flaky: in how many jobs and on how many commits, and when, where, last; the latest
    first."""
    return [
        FlakyTest(name=name, jobs=jobs, commits=commits, last_seen=at, last_commit=sha, last_job=job_id,
                  branch=branch)
        for name, jobs, commits, at, sha, job_id, branch in await db.rows(
            "WITH seen AS (SELECT f.test_id, f.job_id, f.commit_sha, f.at, j.branch, row_number() OVER ("
            "PARTITION BY f.test_id ORDER BY f.at DESC, f.job_id DESC) AS newest FROM flaky f "
            "JOIN test_jobs j ON j.job_id = f.job_id), "
            "counted AS (SELECT test_id, count(*) AS jobs, count(DISTINCT commit_sha) AS commits FROM seen "
            "GROUP BY test_id) "
            "SELECT n.name, c.jobs, c.commits, s.at, s.commit_sha, s.job_id, s.branch FROM seen s "
            "JOIN counted c ON c.test_id = s.test_id JOIN test_names n ON n.id = s.test_id WHERE s.newest = 1 "
            "ORDER BY s.at DESC, n.name")
    ]

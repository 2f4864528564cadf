"""Test cases on their way in, and the answers about them: a job's tests, a test's history, the flaky tests.

A runner sends a job's cases in pieces ahead of its result (``TestCases``): they are held here, per runner,
until the result comes and they are stored with it, in its transaction. Questions about them are answered from
the store (SQLite on its thread, PostgreSQL async: never blocking the event loop), in pieces as bounded as the
ones that came in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import testcases
from .. import wire as p
from ..store import RecordStore
from ..testrecord import UnknownTest


@dataclass
class _Held:
    job_id: int
    attempt: int
    pieces: int = 0
    cases: list[p.TestCase] = field(default_factory=list)


class Incoming:
    """The pieces of test cases each runner has sent for the result it is about to send."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def add(self, runner: str, msg: p.TestCases) -> None:
        """Keep a piece; piece 0 starts over (a runner sends them all again after a reconnect)."""
        held = self._held.get(runner)
        if msg.piece == 0:
            held = self._held[runner] = _Held(msg.job_id, msg.attempt)
        elif held is None or (held.job_id, held.attempt, held.pieces) != (msg.job_id, msg.attempt, msg.piece):
            raise p.ProtocolError(f"test cases of job {msg.job_id} attempt {msg.attempt}: piece {msg.piece} "
                                  "without the ones before it")
        if len(held.cases) + len(msg.cases) > testcases.MAX_CASES:
            raise p.ProtocolError(f"more than {testcases.MAX_CASES} test cases for job {msg.job_id}")
        held.cases += msg.cases
        held.pieces += 1

    def take(self, runner: str, result: p.JobResult) -> list[p.TestCase]:
        """The cases sent for ``result``, all of them (as many as it counts), or a ``ProtocolError``."""
        held = self._held.pop(runner, None)
        ours = held is not None and (held.job_id, held.attempt) == (result.job_id, result.attempt)
        cases = held.cases if held is not None and ours else []
        if len(cases) != result.test_cases:
            raise p.ProtocolError(f"the result of job {result.job_id} counts {result.test_cases} test cases, "
                                  f"{len(cases)} came")
        return cases

    def drop(self, runner: str) -> None:
        """The runner is gone: what it sent belongs to an attempt that will not end here."""
        self._held.pop(runner, None)


def pieces(items: list, size: int = testcases.CASES_PER_PIECE) -> list[list]:
    """``items`` in pieces of ``size`` (one empty piece for none: an answer is always sent)."""
    return [items[start:start + size] for start in range(0, len(items), size)] or [[]]


class Queries:
    """The control requests about test results, each answered with the messages to send."""

    def __init__(self, store: RecordStore, job: Callable[[int], p.JobInfo | None]):
        self.store = store  # SQLite's (answering on its thread) or PostgreSQL's (async)
        self.job = job  # a job by id, as the scheduler has it

    async def answer(self, msg: p.TestsRequest | p.HistoryRequest | p.FlakyRequest) -> list[p.Message]:
        store = self.store
        if isinstance(msg, p.TestsRequest):
            return await self._tests(msg, store)
        if isinstance(msg, p.HistoryRequest):
            return await self._history(msg, store)
        flaky = await store.flaky_tests()
        parts = pieces(flaky)
        return [p.FlakyReply(tests=part, more=n < len(parts) - 1) for n, part in enumerate(parts)]

    async def _tests(self, msg: p.TestsRequest, store: RecordStore) -> list[p.Message]:
        job = self.job(msg.job_id)
        if job is None:
            return [p.Reply(ok=False, message=f"no job {msg.job_id}")]
        reports = await store.test_report(msg.job_id, msg.failed_only, msg.history) or []
        parts = pieces(reports)
        return [p.TestsReply(tests=part, job=job if n == 0 else None, more=n < len(parts) - 1)
                for n, part in enumerate(parts)]

    async def _history(self, msg: p.HistoryRequest, store: RecordStore) -> list[p.Message]:
        try:
            name, branch, entries = await store.test_history(msg.test, msg.branch, msg.limit)
        except UnknownTest as exc:
            return [p.Reply(ok=False, message=str(exc))]
        parts = pieces(entries, 10 * testcases.CASES_PER_PIECE)
        return [p.HistoryReply(test=name, branch=branch, entries=part, more=n < len(parts) - 1)
                for n, part in enumerate(parts)]

"""The durable journal: changes written to the store in batches, and numbered events.

Events are published to subscribers only once the batch that holds them is durable, so a subscriber never sees
something a crash could take back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable

import msgspec

from .. import wire as p
from ..errors import LeaseLost
from ..store import PRUNED_THROUGH, Batch, JobTests, RecordStore, Snapshot

log = logging.getLogger("tuici.dispatcher")

RING_SIZE = 10_000  # the latest durable events, kept in memory for subscribers that are not far behind
PRUNE_SLICE = 10_000  # events deleted per transaction


class Journal:
    def __init__(self, store: RecordStore, on_durable: Callable[[], None],
                 on_lease_lost: Callable[[str], None] | None = None):
        self.store = store
        self.on_durable = on_durable  # called whenever more events are durable
        self.on_lease_lost = on_lease_lost  # a shared store refused our writes: another dispatcher is active
        self.seq = 0  # the last event's number
        self.durable_seq = 0  # the last durable event's number
        self.pruned_through = 0  # events up to this number were deleted by retention
        self.recent: deque[p.Event] = deque(maxlen=RING_SIZE)
        self._pending = Batch()
        self._flush_task: asyncio.Task | None = None
        self._waiters: list[asyncio.Future] = []

    async def open(self) -> Snapshot:
        snap = await self.store.load()
        self.seq = self.durable_seq = snap.last_seq
        self.pruned_through = int(snap.meta.get(PRUNED_THROUGH, 0))
        return snap

    async def close(self) -> None:
        """Write what is pending, then let the store go."""
        if self._flush_task is not None:
            self._flush_task.cancel()
        await self._flush()
        await self.store.release()

    async def abandon(self, patience: float = 2.0) -> None:
        """Drop what is pending (we lost the lease: it may not become durable) and let the store go, waiting at
        most ``patience`` for a database that may be out of reach."""
        if self._flush_task is not None:
            self._flush_task.cancel()
        self._pending = Batch()
        release = asyncio.ensure_future(self.store.release())
        await asyncio.wait([release], timeout=patience)

    def save_commit(self, commit: p.CommitInfo, seen_at: float) -> None:
        self._pending.commits.append((commit, seen_at))
        self._schedule_flush()

    def save_tip(self, branch: str, sha: str | None) -> None:
        self._pending.tips[branch] = sha
        self._schedule_flush()

    def save_job(self, job: p.JobInfo) -> None:
        self._pending.jobs[job.id] = (job, job.priority)
        self._schedule_flush()

    def save_attempt(self, a: p.AttemptInfo) -> None:
        self._pending.attempts[(a.job_id, a.attempt)] = a
        self._schedule_flush()

    def save_tests(self, tests: JobTests) -> None:
        """A finished job's test cases: saved right after the job (``save_job``), they go in its transaction."""
        self._pending.tests.append(tests)

    def save_bisection(self, bisection_id: int, info: p.BisectionInfo, made: list[int]) -> None:
        """``info`` must not change afterwards (the scheduler hands over a copy)."""
        self._pending.bisections[bisection_id] = (info, made)
        self._schedule_flush()

    def save_meta(self, key: str, value: str) -> None:
        self._pending.meta[key] = value
        self._schedule_flush()

    def publish(self, kind: p.EventKind, fields: dict[str, Any]) -> p.Event:
        """Number the event; subscribers get it once it is durable. ``fields`` must not change afterwards."""
        self.seq += 1
        event = p.Event(seq=self.seq, ts=time.time(), kind=kind, **fields)
        self._pending.events.append(event)
        self._schedule_flush()
        return event

    async def prune_events(self, before: float) -> int:
        """Delete the events published before ``before`` (unix time), a slice at a time so that writes go on
        between the slices; how many went. A subscriber resuming from before them gets a snapshot instead."""
        deleted = 0
        while True:
            count, through = await self.store.prune_events_before(before, PRUNE_SLICE)
            if not count:
                return deleted
            deleted += count
            self.pruned_through = through

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Write pending changes, then hand their events to subscribers. Loops until none are left."""
        while self._pending:
            batch, self._pending = self._pending, Batch()
            waiters, self._waiters = self._waiters, []
            # Job records are copied so later in-memory changes cannot race the writer thread.
            batch.jobs = {k: (msgspec.structs.replace(j), pr) for k, (j, pr) in batch.jobs.items()}
            batch.attempts = {k: msgspec.structs.replace(a) for k, a in batch.attempts.items()}
            try:
                await self.store.save(batch)
            except LeaseLost as exc:  # nothing more of ours may become durable: the caller steps down
                log.error("%s", exc)
                if self.on_lease_lost is not None:
                    self.on_lease_lost(str(exc))
                return
            except Exception as exc:  # disk full, I/O error: keep the changes and retry
                log.error("could not write state to %s (%s); retrying every second", self.store.path, exc)
                self._pending = _merge(batch, self._pending)
                self._waiters = waiters + self._waiters
                await asyncio.sleep(1.0)
                continue
            self.recent.extend(batch.events)
            if batch.events:
                self.durable_seq = batch.events[-1].seq
            self.on_durable()
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def durable(self) -> None:
        """Return once every change made so far is on disk."""
        if not self._pending:
            # Nothing new: the batch being written, if any, is all there is to wait for. (A waiter added now would
            # be missed: the flush took its waiters with its batch, and stops when nothing is pending after it.)
            if self._flush_task is not None and not self._flush_task.done():
                await asyncio.shield(self._flush_task)
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._schedule_flush()
        await fut

    async def events_after(self, cursor: int, limit: int = 1000) -> list[p.Event]:
        """Durable events after ``cursor``: from the in-memory ring, or the store for older ones."""
        if cursor >= self.durable_seq:
            return []
        if not self.recent or cursor + 1 < self.recent[0].seq:
            return await self.store.read_events(cursor, limit)
        start = cursor + 1 - self.recent[0].seq
        return [self.recent[i] for i in range(start, min(len(self.recent), start + limit))]


def _merge(first: Batch, second: Batch) -> Batch:
    first.commits += second.commits
    first.tips.update(second.tips)
    first.jobs.update(second.jobs)
    first.attempts.update(second.attempts)
    first.bisections.update(second.bisections)
    first.events += second.events
    first.meta.update(second.meta)
    first.tests += second.tests
    return first

"""The status reply, and the JSON of it that `status --json` prints, kept between requests."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable, cast

import msgspec

from .. import wire as p

if TYPE_CHECKING:
    from .scheduler import Scheduler


class JsonPrefix:
    """The JSON of the leading records of an insertion-ordered dict that are done changing (a commit always,
    a job once finished, an attempt once ended), kept between `status --json` requests: over 10,000 jobs the
    next request copies bytes instead of encoding them. Every change to a record is saved (what the store is not
    told of, it would lose), and each save is reported here: a change to a record inside the prefix drops the
    prefix."""

    def __init__(self, done: Callable[[Any], bool]):
        self.done = done
        self.keys: set = set()
        self.parts: list[bytes] = []  # the prefix's records as JSON array items, without the brackets

    def changed(self, key) -> None:
        if key in self.keys:
            self.keys.clear()
            self.parts.clear()

    def array(self, records: dict) -> msgspec.Raw:
        rest = itertools.islice(records.items(), len(self.keys), None)
        grown = list(itertools.takewhile(lambda item: self.done(item[1]), rest))
        if grown:
            self.parts.append(p.to_json_bytes([record for _, record in grown])[1:-1])
            self.keys.update(key for key, _ in grown)
        tail = p.to_json_bytes(list(itertools.islice(records.values(), len(self.keys), None)))[1:-1]
        return msgspec.Raw(b"[" + b",".join(part for part in (*self.parts, tail) if part) + b"]")


class Status:
    """The status reply from the scheduler's records. Every change to a record reaches the store through a
    ``Save*`` effect, which the server reports here (``jobs.changed``, ``attempts.changed``); commits never
    change."""

    def __init__(self, sched: Scheduler, group: Callable[[], list[p.DispatcherInfo]] = list):
        self.sched = sched
        self.group = group  # the dispatchers of a group sharing a store (none for one alone)
        self.commits = JsonPrefix(lambda c: True)
        self.jobs = JsonPrefix(lambda j: j.state in p.FINAL_STATES)
        self.attempts = JsonPrefix(lambda a: a.ended_at is not None)

    def reply(self, last_seq: int, limit: int, history: p.History) -> p.StatusReply:
        sched = self.sched
        jobs = list(sched.jobs.values())
        if limit:
            jobs = jobs[-limit:]
        shas = {j.commit for j in jobs}
        commits = [c for c in sched.commits.values() if not limit or c.sha in shas]
        ids = {j.id for j in jobs}
        return p.StatusReply(
            repo_url=sched.repo_url, last_seq=last_seq, commits=commits, jobs=jobs,
            runners=[r.info for r in sched.runners.values()],
            attempts=[a for a in sched.attempts.values() if a.job_id in ids], tips=dict(sched.tips), history=history,
            dispatchers=self.group(), bisections=[b.info for b in sched.bisections.values()],
        )

    def json(self, last_seq: int, limit: int, history: p.History) -> bytes:
        """``reply`` as the JSON document `status --json` prints; the long lists mostly from ``JsonPrefix``."""
        if limit:
            return p.to_json_bytes(self.reply(last_seq, limit, history))
        sched = self.sched
        # Each list goes in as one msgspec.Raw (a JSON array), which the encoder copies in as it is.
        # (typed as the lists they encode to: msgspec writes a Raw wherever a value goes)
        return p.to_json_bytes(p.StatusReply(
            repo_url=sched.repo_url, last_seq=last_seq, commits=cast(Any, self.commits.array(sched.commits)),
            jobs=cast(Any, self.jobs.array(sched.jobs)), runners=[r.info for r in sched.runners.values()],
            attempts=cast(Any, self.attempts.array(sched.attempts)), tips=dict(sched.tips), history=history,
            dispatchers=self.group(), bisections=[b.info for b in sched.bisections.values()],
        ))

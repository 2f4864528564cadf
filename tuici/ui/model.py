"""What the control center knows: commits, jobs, runners, bisections and process health, kept current from events.

Plain data, no Textual. Every event carries a full copy of the record it is about, so
applying one is an upsert by key; the model notes which records changed so the panels
redraw only those rows. Untrusted text (subjects, branches, authors, runner names,
error messages) is made safe here, once, on the way in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import msgspec

from .. import wire as p
from ..notify import Notification, notification_for
from ..sanitize import one_line


def safe(text: str) -> str:
    """``one_line`` with a fast path: most text is plain and printable already."""
    return text if text.isprintable() else one_line(text)


@dataclass
class Changes:
    """What changed since the panels last looked."""

    commits: set[str] = field(default_factory=set)  # shas whose row must be redrawn
    commits_added: bool = False  # new rows: the commit order must be rebuilt
    jobs: set[int] = field(default_factory=set)
    tries: bool = False  # a try job was added: the tries panel must be rebuilt
    runners: bool = False
    processes: bool = False
    bisections: bool = False
    reset: bool = False  # a status snapshot replaced everything

    def __bool__(self) -> bool:
        return bool(self.commits or self.commits_added or self.jobs or self.tries or self.runners or self.processes
                    or self.bisections or self.reset)


class Model:
    def __init__(self) -> None:
        self._forget_records()
        self.runners: dict[str, p.RunnerInfo] = {}
        self.processes: dict[str, str] = {}  # process name -> what its last process.* event said: started, exited…
        self.last_seq = 0
        self.loaded = False
        self.partial = False  # only the first page of the status is known: the whole one is on its way
        self.changes = Changes()
        self.alerts: list[Notification] = []  # branches broken or fixed since the app last looked
        self.takeovers: list[str] = []  # dispatchers of a group that took over since the app last looked
        self.active_dispatcher = ""  # with a shared store: the address of the active dispatcher
        self._snapshot_seq = 0  # events up to here are already reflected in the last snapshot

    def _forget_records(self) -> None:
        self.commits: dict[str, p.CommitInfo] = {}
        self.arrival: list[str] = []  # branch commits' shas, oldest first: newest-first is this reversed
        self.jobs: dict[int, p.JobInfo] = {}
        self.tries: list[int] = []  # try jobs (`tuici try`), oldest first; their commits are not in ``arrival``
        self.try_commits: set[str] = set()
        self.latest_job: dict[str, int] = {}  # sha -> its newest job id
        # (branch, bad commit) -> the bisection, the one that changed last at the end
        self.bisections: dict[tuple[str, str], p.BisectionInfo] = {}
        self.first_bad: dict[str, p.BisectionInfo] = {}  # sha -> the bisection that found it the first failing one
        self.counts: Counter[str] = Counter()  # job state -> number of jobs in it

    # ------------------------------------------------------------------ input

    def load(self, status: p.StatusReply, partial: bool = False) -> None:
        """Take a dispatcher's full state, as on connecting or after it restarted.

        Events at or below ``status.last_seq`` that are replayed afterwards are already
        part of this snapshot: their records are skipped so nothing flips back to an older
        state, while process notes (which the snapshot lacks) still apply.

        A ``partial`` status (the first page: the newest jobs and their commits) is shown
        until the whole one comes; that one then replaces it (no event is applied between
        the two), so that the older commits take their places before the newest.
        """
        if self.partial:
            self._forget_records()
        self.partial = partial
        for commit in status.commits:
            self._upsert_commit(commit)
        for job in status.jobs:
            self._upsert_job(job)
        self.runners = {}
        for runner in status.runners:
            self._upsert_runner(runner)
        self.active_dispatcher = next((safe(d.address) for d in status.dispatchers if d.role == "active"), "")
        for bisection in status.bisections:
            self._upsert_bisection(bisection)
        if not partial:
            self._snapshot_seq = status.last_seq
            if not self.loaded:  # nothing seen yet: follow on from the snapshot, not from the start
                self.last_seq = status.last_seq
                self.loaded = True
        self.changes.runners = self.changes.reset = True

    def apply(self, event: p.Event) -> None:
        if event.seq <= self.last_seq:
            return  # already seen: a replay after reconnecting
        self.last_seq = event.seq
        kind = event.kind
        if kind.startswith("process."):
            name = event.message.partition(": ")[0]
            self.processes[safe(name)] = kind.partition(".")[2]
            self.changes.processes = True
            return
        if event.seq <= self._snapshot_seq:
            return
        if kind == "dispatcher.active":  # "dispatcher NAME at ADDRESS is active (epoch N)"
            self.takeovers.append(safe(event.message))
            self.active_dispatcher = safe(event.message.partition(" at ")[2].rpartition(" is active")[0])
            self.changes.processes = True
            return
        notification = notification_for(event)
        if notification is not None:
            self.alerts.append(notification)
        if event.commit is not None:
            self._upsert_commit(event.commit)
        if event.job is not None:
            self._upsert_job(event.job)
        if event.bisection is not None:
            self._upsert_bisection(event.bisection)
        if event.runner is not None:
            if kind == "runner.left":
                self.runners.pop(safe(event.runner.name), None)
                self.changes.runners = True
            else:
                self._upsert_runner(event.runner)

    def update_heartbeats(self, runners: list[p.RunnerInfo]) -> None:
        """Fresh heartbeat times from a status poll (heartbeats publish no events)."""
        for fresh in runners:
            known = self.runners.get(fresh.name)
            if known is not None and known.last_heartbeat != fresh.last_heartbeat:
                known.last_heartbeat = fresh.last_heartbeat
                self.changes.runners = True

    def take_changes(self) -> Changes:
        changes, self.changes = self.changes, Changes()
        return changes

    def take_takeovers(self) -> list[str]:
        takeovers, self.takeovers = self.takeovers, []
        return takeovers

    def take_alerts(self) -> list[Notification]:
        alerts, self.alerts = self.alerts, []
        return alerts

    # ------------------------------------------------------------------ queries

    def job_for_commit(self, sha: str) -> p.JobInfo | None:
        job_id = self.latest_job.get(sha)
        return None if job_id is None else self.jobs.get(job_id)

    def queue(self) -> list[p.JobInfo]:
        """Waiting jobs in the order the dispatcher hands them out (``dispatch_order``). Each job carries its
        priority, so the order is exact for reruns made before we connected too."""
        waiting = [job for job in self.jobs.values() if job.state == "queued"]
        waiting.sort(key=p.dispatch_order)
        return waiting

    def latest_bisection(self) -> p.BisectionInfo | None:
        """The bisection that changed last, unless it was abandoned (that is no news worth a place)."""
        latest = next(reversed(self.bisections.values()), None)
        return latest if latest is not None and latest.state != "abandoned" else None

    def running_jobs(self) -> int:
        return self.counts["running"]

    # ------------------------------------------------------------------ internals

    def _upsert_commit(self, commit: p.CommitInfo) -> None:
        known = commit.sha in self.commits
        self.commits[commit.sha] = msgspec.structs.replace(
            commit, branch=safe(commit.branch), author=safe(commit.author), subject=safe(commit.subject)
        )
        if not known and commit.sha not in self.try_commits:
            self.arrival.append(commit.sha)
            self.changes.commits_added = True
        self.changes.commits.add(commit.sha)

    def _upsert_job(self, job: p.JobInfo) -> None:
        job = msgspec.structs.replace(job, branch=safe(job.branch), error=safe(job.error),
                                      runner=safe(job.runner) if job.runner else job.runner)
        old = self.jobs.get(job.id)
        if old is not None:
            self.counts[old.state] -= 1
        self.counts[job.state] += 1
        self.jobs[job.id] = job
        sha = job.commit
        if sha not in self.commits:  # its commit.seen is older than what we were sent
            self._upsert_commit(p.CommitInfo(sha=sha, branch=job.branch))
        if job.kind == "try" and old is None:
            self.tries.append(job.id)
            self.changes.tries = True
            if sha not in self.try_commits:  # listed apart from the branch commits (it came as one first)
                self.try_commits.add(sha)
                self.arrival.remove(sha)
                self.changes.commits_added = True
        if self.latest_job.get(sha, 0) <= job.id:
            self.latest_job[sha] = job.id
            self.changes.commits.add(sha)
        self.changes.jobs.add(job.id)

    def _upsert_bisection(self, bisection: p.BisectionInfo) -> None:
        bisection = msgspec.structs.replace(bisection, branch=safe(bisection.branch))
        key = (bisection.branch, bisection.bad)
        self.bisections.pop(key, None)
        self.bisections[key] = bisection
        if bisection.first_bad is not None:
            self.first_bad[bisection.first_bad] = bisection
            self.changes.commits.add(bisection.first_bad)
        self.changes.bisections = True

    def _upsert_runner(self, runner: p.RunnerInfo) -> None:
        self.runners[runner.name] = msgspec.structs.replace(runner, name=safe(runner.name), host=safe(runner.host))
        self.changes.runners = True

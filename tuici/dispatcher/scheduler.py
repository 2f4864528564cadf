"""The scheduling rules, apart from any I/O: commits, jobs, attempts and runners, and what happens to them.

The server feeds it what arrives (a commit, a runner's hello, output, a result, a cancel, the passing of time)
and carries out what it asks for, which it collects in order as effects: persist a record, publish an event,
send a runner a message, drop a connection, close or empty a job's log, take a cancelled job back later. It
never waits, reads a socket or touches the disk, and reads the time from the clock it is given, so every rule
can be tested in a few microseconds (tests/test_scheduler.py).
"""

from __future__ import annotations

import bisect
import heapq
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from .. import wire as p
from . import bisection as bi

if TYPE_CHECKING:
    from ..store import Snapshot

log = logging.getLogger("tuici.dispatcher")

CANCEL_GRACE = 10.0  # seconds a runner has to end a cancelled job before the dispatcher takes the job back

Outcome = Literal["passed", "failed", "error", "cancelled", "lost", "timeout"]  # how an attempt ended
VERDICTS = frozenset({"passed", "failed"})  # the final states that say something of the code tested
EventKind = Literal[
    "commit.seen", "branch.deleted", "branch.broken", "branch.fixed", "job.queued", "job.started", "job.requeued",
    "job.finished", "runner.joined", "runner.idle", "runner.lost", "runner.left",
    "bisection.started", "bisection.job", "bisection.found", "bisection.abandoned",
]
DAY = 86400.0
Verdict = Literal["passed", "failed", "untestable"]  # what a commit's jobs said of it


class Clock(Protocol):
    """Wall time for records, monotonic time for timeouts: the ``time`` module, or a test's own."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


# ------------------------------------------------------------------ effects


@dataclass(frozen=True)
class Publish:
    """Number this event and publish it once durable; its records are copies, as they were then."""

    kind: EventKind
    fields: dict[str, Any]


@dataclass(frozen=True)
class SaveCommit:
    commit: p.CommitInfo
    seen_at: float


@dataclass(frozen=True)
class SaveTip:
    branch: str
    sha: str | None  # None: the branch is gone


@dataclass(frozen=True)
class SaveJob:
    job: p.JobInfo


@dataclass(frozen=True)
class SaveAttempt:
    attempt: p.AttemptInfo


@dataclass(frozen=True)
class SaveBisection:
    id: int
    info: p.BisectionInfo
    made: list[int]


@dataclass(frozen=True)
class Send:
    """Send a connected runner a message, without waiting."""

    runner: str
    message: p.Welcome | p.Assign | p.CancelJob | p.ResultAck


@dataclass(frozen=True)
class Disconnect:
    runner: str


@dataclass(frozen=True)
class CloseLog:
    job_id: int


@dataclass(frozen=True)
class TruncateLog:
    """Empty the job's log: what it holds belongs to an attempt that was lost."""

    job_id: int


@dataclass(frozen=True)
class TakeBackAt:
    """Call ``Scheduler.take_back(job_id, attempt)`` at monotonic time ``at``."""

    job_id: int
    attempt: int
    at: float


Effect = (Publish | SaveCommit | SaveTip | SaveJob | SaveAttempt | SaveBisection | Send | Disconnect | CloseLog
          | TruncateLog | TakeBackAt)


# ------------------------------------------------------------------ the rules


def runner_name(hello: p.Hello) -> str:
    """The name a runner is registered under: its own, else its host and pid."""
    return hello.name or f"{hello.host or 'runner'}-{hello.pid}"


@dataclass(eq=False)
class Runner:
    """A runner as registered; a new one for every hello, so a returning runner never shares its old record's
    fate. ``connected`` is whether the server still holds its connection."""

    info: p.RunnerInfo
    connected: bool
    last_seen: float  # monotonic: when anything last came from it
    idle_since: float
    taken_back: tuple[int, int] | None = None  # (job, attempt) taken from it after a cancel: late output is dropped


@dataclass(frozen=True)
class BranchVerdict:
    """What a branch's newest tested commit gave: ``rank`` is when that commit was seen (see
    ``Scheduler.commit_rank``), ``state`` passed or failed."""

    rank: int
    job_id: int
    commit: str
    state: p.JobState


class Scheduler:
    """The queue and its runners. Each call changes them at once and leaves what the world must be told or
    made to do in ``effects()``."""

    def __init__(self, heartbeat_timeout: float = 5.0, max_attempts: int = 3, repo_url: str = "",
                 clock: Clock = time):
        self.heartbeat_timeout = heartbeat_timeout
        self.max_attempts = max_attempts
        self.repo_url = repo_url  # sent with every job
        self.clock = clock
        self.commits: dict[str, p.CommitInfo] = {}
        self.commit_rank: dict[str, int] = {}  # sha -> the order it was seen in (a branch's newer commits rank higher)
        self.branch_verdicts: dict[str, BranchVerdict] = {}  # branch -> its newest tested commit's verdict
        self.tips: dict[str, str] = {}
        self.jobs: dict[int, p.JobInfo] = {}
        self.attempts: dict[tuple[int, int], p.AttemptInfo] = {}
        self.active_job: dict[str, int] = {}  # commit -> its queued or running job
        self.tries: set[str] = set()  # commits that are snapshots of a work tree (`tuici try`), not a branch's
        self.queue: list[tuple[int, int, int]] = []  # heap of (*dispatch_order(job), job id); stale ones skipped
        self.branch_commits: dict[str, list[str]] = {}  # each branch's commits, oldest first, as reported
        self.position: dict[str, int] = {}  # commit -> its index in its branch's list
        self.verdicts: dict[str, Verdict] = {}  # commit -> the newest verdict of its jobs
        self.tested: dict[str, list[int]] = {}  # branch -> positions of its commits that passed or failed, sorted
        self.newest_job: dict[str, int] = {}  # branch -> its job queued at Priority.NEW under "newest-first"
        self.bisections: dict[int, bi.Bisection] = {}
        self.bisecting: dict[str, int] = {}  # branch -> its running bisection
        self.bisected: set[str] = set()  # failing commits that had a bisection: one each
        self.runners: dict[str, Runner] = {}
        self.cancel_requested: set[int] = set()  # running jobs that end as cancelled, whatever the runner says
        self.next_job_id = 1
        self.restart_grace_until = 0.0
        self._effects: list[Effect] = []

    def effects(self) -> list[Effect]:
        """What the calls since the last time asked for, in order; the caller carries them out."""
        effects, self._effects = self._effects, []
        return effects

    def load(self, snap: Snapshot) -> None:
        for c in snap.commits:
            self.commits[c.sha] = c
            self.commit_rank[c.sha] = len(self.commit_rank)
            self._place(c)
        self.tips = dict(snap.tips)
        for job, prio in snap.jobs:
            self.jobs[job.id] = job
            job.priority = prio  # the column is authoritative: bodies stored before the field lack it
            self.next_job_id = max(self.next_job_id, job.id + 1)
            if job.state in ("queued", "running"):
                self.active_job[job.commit] = job.id
            if job.state == "queued":
                self._enqueue(job)
                if prio == p.Priority.NEW:
                    self.newest_job[job.branch] = job.id
            if job.kind == "try":
                self.tries.add(job.commit)
            if job.commit in self.position:
                self._judge(job)
        for bisection_id, info, made in snap.bisections:
            self.bisections[bisection_id] = bi.Bisection(bisection_id, info, made)
            self.bisected.add(info.bad)
            if info.state == "running":
                self.bisecting[info.branch] = bisection_id
        for a in snap.attempts:
            self.attempts[(a.job_id, a.attempt)] = a
        # Each branch's verdict as it was: only a change from now on is published.
        judged = (j for j in self.jobs.values() if j.state in VERDICTS and j.kind == "commit")
        for job in sorted(judged, key=lambda j: (j.finished_at or 0, j.id)):
            self._judge_branch(job, publish=False)
        if any(j.state == "running" for j in self.jobs.values()):
            # Runners that were busy when we went down get this long to reconnect and keep their job.
            self.restart_grace_until = self.clock.monotonic() + self.heartbeat_timeout

    def _publish(self, kind: EventKind, **fields: Any) -> None:
        """Copy the records as they are now: they go on changing before the event is written."""
        self._effects.append(Publish(kind, {
            k: msgspec.structs.replace(v) if isinstance(v, msgspec.Struct) else v for k, v in fields.items()
        }))

    def _save(self, record: p.JobInfo | p.AttemptInfo) -> None:
        self._effects.append(SaveJob(record) if isinstance(record, p.JobInfo) else SaveAttempt(record))

    def _enqueue(self, job: p.JobInfo) -> None:
        heapq.heappush(self.queue, (*p.dispatch_order(job), job.id))

    def _reprioritize(self, job: p.JobInfo, priority: int, why: str) -> None:
        """Move a queued job to another level of the queue."""
        job.priority = int(priority)
        self._enqueue(job)
        self._save(job)
        self._publish("job.queued", job=job, message=why)

    # ------------------------------------------------------------------ commits and jobs

    def commits_seen(self, msg: p.CommitsSeen) -> int:
        """Record the observer's new commits and the branch's tip, and queue a job for each commit not reported
        ``untested`` and not skipped (``[skip ci]``); how many were queued. Under "newest-first", the newest goes
        ahead of the branch's older queued commits, which stay behind every new commit: the branch's newest until
        now first (``Priority.SUPERSEDED``), then the others (``Priority.BACKFILL``).
        With ``cancel_superseded``, the branch's older queued jobs are cancelled once it moved."""
        now = self.clock.time()
        moved = self.tips.get(msg.branch) != msg.tip
        fresh = [c for c in msg.commits if c.sha not in self.commits]
        untested = set(msg.untested)
        to_queue = [c.sha for c in fresh if c.sha not in untested and not c.skipped]
        newest_first = msg.order == "newest-first"
        for commit in fresh:
            self.commits[commit.sha] = commit
            self.commit_rank[commit.sha] = len(self.commit_rank)
            self._place(commit)
            self._effects.append(SaveCommit(commit, now))
            self._publish("commit.seen", commit=commit)
            if commit.sha not in to_queue:
                continue
            newest = commit.sha == to_queue[-1]
            job = self._new_job(commit.sha, commit.branch,
                                p.Priority.BACKFILL if newest_first and not newest else p.Priority.NEW)
            if newest_first and newest:
                self._put_behind(msg.branch, commit.sha)
                self.newest_job[msg.branch] = job.id
        self.tips[msg.branch] = msg.tip
        self._effects.append(SaveTip(msg.branch, msg.tip))
        if msg.cancel_superseded and moved:
            self._cancel_queued(msg.branch, f"superseded by {msg.tip}")
        return len(to_queue)

    def _place(self, commit: p.CommitInfo) -> None:
        """Note the commit's place among its branch's (it is reported once: on the first branch it was seen on)."""
        shas = self.branch_commits.setdefault(commit.branch, [])
        self.position[commit.sha] = len(shas)
        shas.append(commit.sha)

    def _put_behind(self, branch: str, newer: str) -> None:
        """The branch's newest queued commit so far goes behind every new commit: ``newer`` came after it."""
        previous = self.jobs.get(self.newest_job.pop(branch, 0))
        if previous is not None and previous.state == "queued" and previous.priority == p.Priority.NEW:
            self._reprioritize(previous, p.Priority.SUPERSEDED, f"behind {newer[:10]}, newer on {branch}")

    def branch_gone(self, msg: p.BranchGone) -> None:
        self.tips.pop(msg.branch, None)
        self.branch_verdicts.pop(msg.branch, None)
        self._effects.append(SaveTip(msg.branch, None))
        self._publish("branch.deleted", message=msg.branch)
        running = self.bisecting.get(msg.branch)
        if running is not None:
            self._end_bisection(self.bisections[running], "abandoned", f"{msg.branch} was deleted")
        if msg.cancel_queued:
            self._cancel_queued(msg.branch, f"branch {msg.branch} was deleted")

    def _cancel_queued(self, branch: str, reason: str) -> None:
        """Cancel the queued jobs the observer made for ``branch``'s commits, but not a job someone asked for (a
        rerun or a try: a priority or kind of its own), nor one whose commit is a branch's tip now (a branch
        merged by fast-forward and deleted leaves its last commit to the branch it was merged into)."""
        tips = set(self.tips.values())
        for job_id in sorted(self.active_job.values()):
            job = self.jobs[job_id]
            # observed: not a rerun's, a try's nor a bisection's
            observed = job.priority in (p.Priority.NEW, p.Priority.SUPERSEDED, p.Priority.BACKFILL)
            if (job.state == "queued" and job.kind == "commit" and observed and job.branch == branch
                    and job.commit not in tips):
                job.error = reason
                self._finish(job, "cancelled", "cancelled", reason)

    def _new_job(self, sha: str, branch: str, priority: int, kind: p.JobKind = "commit") -> p.JobInfo:
        job = p.JobInfo(id=self.next_job_id, commit=sha, branch=branch, state="queued",
                        queued_at=self.clock.time(), priority=int(priority), kind=kind)
        self.next_job_id += 1
        self.jobs[job.id] = job
        self.active_job[sha] = job.id
        self._enqueue(job)
        self._save(job)
        self._publish("job.queued", job=job)
        return job

    def _front(self) -> int:
        """A priority above every job's: what someone asks for (a rerun, a try) goes ahead of everything queued."""
        return max(p.Priority.FRONT, max((j.priority for j in self.jobs.values()), default=0) + 1)

    def try_commit(self, commit: p.CommitInfo) -> p.Reply:
        """Queue a snapshot of a work tree (`tuici try`) at the front, as a job of kind try."""
        if commit.sha not in self.commits:
            commit.skipped = False  # a try is asked for: its message has no say
            self.commits[commit.sha] = commit
            self._effects.append(SaveCommit(commit, self.clock.time()))
            self._publish("commit.seen", commit=commit)
        self.tries.add(commit.sha)
        active = self.active_job.get(commit.sha)
        if active is not None:
            return p.Reply(ok=True, message=f"job {active} is testing {commit.sha[:10]} already", job=self.jobs[active])
        job = self._new_job(commit.sha, commit.branch, self._front(), kind="try")
        return p.Reply(ok=True, message=f"job {job.id} queued at the front", job=job)

    def rerun(self, prefix: str) -> p.Reply:
        """Queue the commit again, ahead of every other job (or move its queued job there)."""
        prefix = prefix.strip().lower()
        matches = [sha for sha in self.commits if sha.startswith(prefix)] if len(prefix) >= 4 else []
        if len(matches) != 1:
            return p.Reply(ok=False, message=f"{'no' if not matches else 'more than one'} commit matches {prefix!r}")
        sha = matches[0]
        top = self._front()
        active = self.active_job.get(sha)
        if active is not None and self.jobs[active].state == "queued":
            job = self.jobs[active]
            self._reprioritize(job, top, "moved to the front")
            return p.Reply(ok=True, message=f"job {job.id} moved to the front of the queue", job=job)
        if active is not None:
            return p.Reply(ok=False, message=f"job {active} for {sha[:10]} is running already")
        job = self._new_job(sha, self.commits[sha].branch, priority=top,
                            kind="try" if sha in self.tries else "commit")
        return p.Reply(ok=True, message=f"job {job.id} queued at the front", job=job)

    def cancel(self, job_id: int) -> p.Reply:
        """A queued job ends at once; a running one's runner is told to end it, and if it has not within
        ``CANCEL_GRACE``, ``take_back`` ends it. Cancelling a job of a running bisection abandons it."""
        job = self.jobs.get(job_id)
        if job is None:
            return p.Reply(ok=False, message=f"no job {job_id}")
        bisecting = self.bisections.get(self.bisecting.get(job.branch, 0))
        if bisecting is not None and (job.state not in ("queued", "running") or job_id not in bisecting.info.jobs):
            bisecting = None
        if job.state == "queued":
            self._finish(job, "cancelled", "cancelled", "cancelled while queued", review=bisecting is None)
            if bisecting is not None:
                self._end_bisection(bisecting, "abandoned", f"its job {job_id} was cancelled")
            return p.Reply(ok=True, message=f"job {job_id} cancelled", job=job)
        if bisecting is not None:
            self._end_bisection(bisecting, "abandoned", f"its job {job_id} was cancelled")
        if job.state == "running":
            if job_id not in self.cancel_requested:
                self.cancel_requested.add(job_id)
                self._effects.append(TakeBackAt(job_id, job.attempts, self.clock.monotonic() + CANCEL_GRACE))
            runner = self.runners.get(job.runner or "")
            if runner is not None and runner.connected:
                self._effects.append(Send(runner.info.name, p.CancelJob(job_id=job_id)))
            return p.Reply(ok=True, message=f"job {job_id} is being cancelled on {job.runner}", job=job)
        return p.Reply(ok=False, message=f"job {job_id} has already finished ({job.state})", job=job)

    def take_back(self, job_id: int, attempt: int) -> Runner | None:
        """End a cancelled job ourselves if its runner has not (its handling of the job died, or it is stuck):
        else the job stays running and the runner busy. The runner to tell, once that is durable, with
        ``drop_taken_back``; None if it is away (when it comes back, it learns the job is no longer its own)."""
        job = self.jobs[job_id]
        if job.state != "running" or job.attempts != attempt:
            return None
        reason = f"{job.runner} had not ended it {CANCEL_GRACE:g} s after the cancel; the dispatcher took it back"
        log.warning("job %s: %s", job_id, reason)
        runner = self.runners.get(job.runner or "")
        self._effects.append(CloseLog(job_id))
        self._finish(job, "cancelled", "cancelled", reason)
        if runner is None or not runner.connected or runner.info.job != job_id:
            return None
        runner.taken_back = (job_id, attempt)
        return runner

    def drop_taken_back(self, runner: Runner) -> None:
        """Free the runner and have it drop the job taken back from it, if it still holds it."""
        if runner.taken_back is None or not runner.connected or runner.info.job != runner.taken_back[0]:
            return
        job_id, attempt = runner.taken_back
        self._idle(runner)
        self._effects.append(Send(runner.info.name, p.ResultAck(
            job_id=job_id, attempt=attempt, accepted=False, reason=self.attempts[(job_id, attempt)].reason)))
        self.dispatch()

    # ------------------------------------------------------------------ runners

    def register(self, hello: p.Hello) -> Runner | None:
        """A runner's hello: welcome it (keeping the job it holds if that is still its own), or None when a
        connected runner has its name."""
        name = runner_name(hello)
        old = self.runners.get(name)
        if old is not None and old.info.state != "lost":
            return None
        now = self.clock.monotonic()
        info = p.RunnerInfo(name=name, host=hello.host, pid=hello.pid, state="idle",
                            last_heartbeat=self.clock.time(), jobs_done=old.info.jobs_done if old else 0)
        runner = Runner(info=info, connected=True, last_seen=now, idle_since=now)
        offsets: dict[int, int] = {}
        for held in hello.held:
            job = self.jobs.get(held.job_id)
            if job is not None and job.state == "running" and job.runner == name and job.attempts == held.attempt:
                offsets[job.id] = job.log_size
                info.state, info.job = "busy", job.id
            else:
                log.info("runner %s holds job %s attempt %s that is no longer its own", name, held.job_id, held.attempt)
        self.runners[name] = runner
        self._effects.append(Send(name, p.Welcome(version=p.PROTOCOL_VERSION, repo_url=self.repo_url,
                                                  log_offsets=offsets, name=name)))
        self._publish("runner.joined", runner=info)
        if info.job is not None and info.job in self.cancel_requested:
            self._effects.append(Send(name, p.CancelJob(job_id=info.job)))
        return runner

    def heard_from(self, runner: Runner) -> None:
        """Anything from the runner (or our own stall on its behalf) shows it is alive."""
        runner.last_seen = self.clock.monotonic()

    def heartbeat(self, runner: Runner) -> None:
        """A runner holding a job says it is alive (an idle one sends nothing)."""
        runner.info.last_heartbeat = self.clock.time()

    def _owns(self, runner: Runner, job_id: int, attempt: int) -> bool:
        job = self.jobs.get(job_id)
        return (
            job is not None and job.state == "running" and job.runner == runner.info.name
            and job.attempts == attempt and runner.info.job == job_id
        )

    def output(self, runner: Runner, msg: p.Output) -> bytes:
        """The part of ``msg`` the log does not have yet (output is resent after a reconnect)."""
        if not self._owns(runner, msg.job_id, msg.attempt):
            if runner.taken_back == (msg.job_id, msg.attempt):
                return b""  # sent before the runner heard that we took the job back
            raise p.ProtocolError(f"output for job {msg.job_id} attempt {msg.attempt}, which is not this runner's")
        have = self.jobs[msg.job_id].log_size
        if msg.offset > have:
            raise p.ProtocolError(f"output for job {msg.job_id} at offset {msg.offset} leaves a gap after {have}")
        return msg.data[have - msg.offset:]

    def output_written(self, runner: Runner, msg: p.Output, data: bytes) -> int | None:
        """``data`` from ``output`` is in the log: the offset it starts at, or None if the attempt was lost
        meanwhile (its log is being discarded)."""
        if not self._owns(runner, msg.job_id, msg.attempt):
            return None
        job = self.jobs[msg.job_id]
        offset = job.log_size
        job.log_size += len(data)
        return offset

    def result(self, runner: Runner, msg: p.JobResult) -> str | None:
        """End the job as the result says; the reason it is rejected if the attempt is not this runner's (any
        more). Once that is durable, ``result_durable`` frees the runner."""
        if not self._owns(runner, msg.job_id, msg.attempt):
            log.warning("rejected result from %s for job %s attempt %s: not its job (any more)",
                        runner.info.name, msg.job_id, msg.attempt)
            return "this attempt is no longer assigned to this runner"
        job = self.jobs[msg.job_id]
        self._effects.append(CloseLog(job.id))
        state: p.JobState
        outcome: Outcome
        if msg.cancelled or job.id in self.cancel_requested:
            state, outcome = "cancelled", "cancelled"
        elif msg.error:
            state, outcome = "error", "error"
        elif msg.timed_out:
            state, outcome = "failed", "timeout"
        else:
            state = outcome = "passed" if msg.exit_code == 0 else "failed"
        job.exit_code = msg.exit_code
        job.duration_s = msg.duration_s
        job.passed, job.failed, job.skipped = msg.passed, msg.failed, msg.skipped
        job.env, job.env_reused = msg.env, msg.env_reused
        job.failed_tests, job.flaky_tests = msg.failed_tests, msg.flaky_tests
        job.error = msg.error or (f"timed out after {msg.duration_s:.0f} s" if msg.timed_out else "")
        self._finish(job, state, outcome, job.error)
        return None

    def result_durable(self, runner: Runner) -> None:
        runner.info.jobs_done += 1
        if runner.connected:  # else it was lost meanwhile: idle, its name would be held for ever
            self._idle(runner)

    def _idle(self, runner: Runner) -> None:
        """Free the runner: only right before the ack that drops its job goes out, so that nothing can be
        assigned ahead of it."""
        runner.info.state, runner.info.job = "idle", None
        runner.idle_since = self.clock.monotonic()
        self._publish("runner.idle", runner=runner.info)

    def _finish(self, job: p.JobInfo, state: p.JobState, outcome: Outcome, reason: str, review: bool = True) -> None:
        """End the job; then what its end means to its branch's bisection (unless the bisection ended it)."""
        job.state = state
        job.finished_at = self.clock.time()
        self.active_job.pop(job.commit, None)
        self.cancel_requested.discard(job.id)
        self._end_attempt(job, outcome, reason, job.finished_at)
        self._save(job)
        self._publish("job.finished", job=job, message=reason)
        if state in VERDICTS and job.kind == "commit":  # a try's work tree says nothing of its branch
            self._judge_branch(job, publish=True)
        if job.commit in self.position:
            self._judge(job)
            if review:
                self._review(self.commits[job.commit].branch)

    def _judge_branch(self, job: p.JobInfo, publish: bool) -> None:
        """Take ``job``'s verdict as its branch's, unless a newer commit of the branch has one already (jobs
        finish out of order: an older commit's result says nothing about the branch now). A change from passed
        to failed publishes ``branch.broken``, back ``branch.fixed``; a branch's first verdict publishes
        nothing, and error and cancelled are no verdict on the code (tuici could not run it)."""
        rank = self.commit_rank.get(job.commit, -1)
        before = self.branch_verdicts.get(job.branch)
        if before is not None and rank < before.rank:
            return
        self.branch_verdicts[job.branch] = BranchVerdict(rank, job.id, job.commit, job.state)
        if not publish or before is None or before.state == job.state:
            return
        broken = job.state == "failed"
        was = "passed" if broken else "failed"
        message = (f"{job.branch} {'fails' if broken else 'passes again'} at {job.commit[:10]} (job {job.id}); "
                   f"it {was} at {before.commit[:10]} (job {before.job_id})")
        self._publish("branch.broken" if broken else "branch.fixed", job=job, commit=self.commits.get(job.commit),
                      message=message)

    # ------------------------------------------------------------------ retention

    def prune(self, keep_days: float, keep_bytes: int) -> list[p.JobInfo]:
        """The finished jobs whose logs retention deletes, oldest first: each that finished over ``keep_days``
        ago, then the next oldest while the logs kept (running jobs' included) hold over ``keep_bytes``. Never a
        queued or running job's. The caller deletes the files, then calls ``logs_deleted``."""
        cutoff = self.clock.time() - keep_days * DAY
        total, _ = self.kept_logs()
        finished = sorted((j for j in self.jobs.values() if j.state in p.FINAL_STATES and not j.log_deleted),
                          key=lambda j: (j.finished_at or j.queued_at, j.id))
        pruned = []
        for job in finished:
            if (job.finished_at or job.queued_at) >= cutoff and total <= keep_bytes:
                break  # this one and every younger one stay
            total -= job.log_size
            pruned.append(job)
        return pruned

    def logs_deleted(self, jobs: list[p.JobInfo]) -> None:
        """Retention deleted these jobs' logs (finished jobs stay finished: nothing changed them meanwhile)."""
        for job in jobs:
            job.log_deleted = True
            self._save(job)

    def kept_logs(self) -> tuple[int, int]:
        """(bytes, number) of the job logs not deleted by retention, as the job records count them."""
        sizes = [j.log_size for j in self.jobs.values() if not j.log_deleted and j.log_size]
        return sum(sizes), len(sizes)

    def _end_attempt(self, job: p.JobInfo, outcome: Outcome, reason: str, at: float) -> None:
        """End the job's latest attempt, unless it has ended already."""
        a = self.attempts.get((job.id, job.attempts))
        if a is not None and a.ended_at is None:
            a.ended_at, a.outcome, a.reason = at, outcome, reason
            self._save(a)

    def runner_gone(self, runner: Runner, reason: str, left: bool = False) -> None:
        """The runner is gone (lost, or left on purpose); its job goes back to the queue."""
        info = runner.info
        if runner.connected:
            self._effects.append(Disconnect(info.name))
        runner.connected = False
        info.state = "lost"
        job_id, info.job = info.job, None
        if left:
            log.info("runner %s left", info.name)
            self.runners.pop(info.name, None)
        else:
            log.warning("runner %s lost: %s", info.name, reason)
        self._publish("runner.left" if left else "runner.lost", runner=info, message=reason)
        if job_id is not None and self.jobs[job_id].state == "running":  # not finished while its ack was on disk
            self._requeue(self.jobs[job_id], reason if left else "runner lost")
        self.dispatch()

    def _requeue(self, job: p.JobInfo, reason: str) -> None:
        """The attempt is lost: the job is queued again, unless it was being cancelled or has had its attempts."""
        self._end_attempt(job, "lost", reason, self.clock.time())
        self._effects.append(CloseLog(job.id))
        if job.id in self.cancel_requested:
            self._finish(job, "cancelled", "cancelled", reason)
        elif job.attempts >= self.max_attempts:
            job.error = f"gave up after {job.attempts} attempts: {reason}"
            self._finish(job, "error", "error", job.error)
        else:
            job.state, job.runner = "queued", None
            # Everything it printed belongs to the lost attempt; the next attempt starts a fresh log.
            job.log_size = 0
            self._effects.append(TruncateLog(job.id))
            self._enqueue(job)
            self._save(job)
            self._publish("job.requeued", job=job, message=reason)

    def expire(self) -> None:
        """Mark runners that hold a job and were quiet for longer than the heartbeat timeout (their lease, from the
        job's assignment on) lost; once the grace after a restart is over, queue again the running jobs no runner
        came back for. An idle runner sends nothing: its connection closing says it is gone, and one that hangs
        is found out once it is given a job."""
        now = self.clock.monotonic()
        for runner in list(self.runners.values()):
            if runner.connected and runner.info.job is not None and now - runner.last_seen > self.heartbeat_timeout:
                self.runner_gone(runner, f"no heartbeat for {now - runner.last_seen:.1f} s")
        if self.restart_grace_until and now > self.restart_grace_until:
            self.restart_grace_until = 0.0
            held = {r.info.job for r in self.runners.values() if r.connected}
            for job in list(self.jobs.values()):
                if job.state == "running" and job.id not in held:
                    self._requeue(job, "runner lost")
            self.dispatch()

    def next_expiry(self) -> float | None:
        """When ``expire`` may next find something to do (monotonic), as things are now; None while nothing can
        expire: no runner holds a job and no grace after a restart runs."""
        due = [r.last_seen + self.heartbeat_timeout for r in self.runners.values()
               if r.connected and r.info.job is not None]
        if self.restart_grace_until:
            due.append(self.restart_grace_until)
        return min(due, default=None)

    # ------------------------------------------------------------------ bisections

    def _judge(self, job: p.JobInfo) -> None:
        """Take a finished job's verdict on its commit: passed or failed replaces any earlier one; an error only
        says the commit cannot be tested while nothing else is known; a cancelled job says nothing."""
        sha = job.commit
        before = self.verdicts.get(sha)
        if job.state in ("passed", "failed"):
            self.verdicts[sha] = job.state
            if before not in ("passed", "failed"):
                bisect.insort(self.tested.setdefault(self.commits[sha].branch, []), self.position[sha])
        elif job.state == "error" and before is None:
            self.verdicts[sha] = "untestable"

    def _mark(self, sha: str) -> bi.Mark:
        active = self.active_job.get(sha)
        if active is not None:
            return "running" if self.jobs[active].state == "running" else "queued"
        return self.verdicts.get(sha, "untested")

    def _review(self, branch: str) -> None:
        """A job of the branch ended: take its running bisection a step on, or start one if the branch's newest
        tested commit now fails where the tested one before it passed, with commits between them untested."""
        running = self.bisecting.get(branch)
        if running is not None:
            self._advance(self.bisections[running])
        tested = self.tested.get(branch, [])
        if branch in self.bisecting or not tested:
            return
        shas = self.branch_commits[branch]
        bad = shas[tested[-1]]
        below = (tested[-2], self.verdicts[shas[tested[-2]]]) if len(tested) > 1 else None
        if bad in self.bisected or not bi.starts(below, (tested[-1], self.verdicts[bad])):
            return
        assert below is not None
        record = bi.Bisection(id=max(self.bisections, default=0) + 1,
                              info=p.BisectionInfo(branch=branch, good=shas[below[0]], bad=bad))
        self.bisections[record.id] = record
        self.bisecting[branch] = record.id
        self.bisected.add(bad)
        log.info("bisecting %s between %s (passed) and %s (failed)", branch, shas[below[0]][:10], bad[:10])
        self._bisection_changed(record, "bisection.started")
        self._advance(record)

    def _advance(self, record: bi.Bisection) -> None:
        info = record.info
        shas = self.branch_commits[info.branch]
        low, high = self.position[info.good], self.position[info.bad]
        span = shas[low:high + 1]
        tested = self.tested.get(info.branch, [])
        fixed = any(self.verdicts[shas[i]] == "passed" for i in tested[bisect.bisect_right(tested, high):])
        current = self._current_job(record)
        step = bi.step([self._mark(sha) for sha in span], fixed,
                       None if current is None else self.position[current.commit] - low)
        if step.state == "found":
            assert step.first_bad is not None
            info.first_bad = span[step.first_bad]
            self._end_bisection(record, "found", f"first failing commit {info.first_bad[:10]}")
            return
        if step.state == "abandoned":
            self._end_bisection(record, "abandoned", "a newer commit passed" if fixed else "nothing left to test")
            return
        if step.probe is None:
            return  # waiting for its running job
        target = span[step.probe]
        if current is not None and current.commit != target and current.state == "queued":
            self._release(record, current)
        active = self.active_job.get(target)
        if active is None:
            job = self._new_job(target, info.branch, p.Priority.BISECT)
            record.made = [*record.made, job.id]
        else:
            job = self.jobs[active]
            if job.state != "queued" or job.priority >= p.Priority.BISECT:
                return  # it runs ahead of the bisection anyway (a new commit, a rerun), or runs now: wait for it
            self._reprioritize(job, p.Priority.BISECT, f"moved up: the bisection of {info.branch} tests it")
        info.jobs = [*(j for j in info.jobs if j != job.id), job.id]  # moved up again after it was let go
        self._bisection_changed(record, "bisection.job")

    def _current_job(self, record: bi.Bisection) -> p.JobInfo | None:
        """The bisection's newest job, while it is queued or running."""
        job = self.jobs[record.info.jobs[-1]] if record.info.jobs else None
        return job if job is not None and job.state in ("queued", "running") else None

    def _release(self, record: bi.Bisection, job: p.JobInfo) -> None:
        """A queued job the bisection no longer needs: ended if it queued the job itself, else moved back behind
        every new commit."""
        why = f"no longer needed by the bisection of {record.info.branch}"
        if job.id in record.made:
            self._finish(job, "cancelled", "cancelled", why, review=False)
        else:
            self._reprioritize(job, p.Priority.BACKFILL, why)

    def _end_bisection(self, record: bi.Bisection, state: p.BisectionState, why: str) -> None:
        current = self._current_job(record)
        if current is not None and current.state == "queued":
            self._release(record, current)
        record.info.state = state
        del self.bisecting[record.info.branch]
        log.info("bisection of %s %s: %s", record.info.branch, state, why)
        self._bisection_changed(record, "bisection.found" if state == "found" else "bisection.abandoned", why)

    def _bisection_changed(self, record: bi.Bisection, kind: EventKind, why: str = "") -> None:
        self._effects.append(SaveBisection(record.id, msgspec.structs.replace(record.info), record.made))
        self._publish(kind, bisection=record.info, message=why)

    # ------------------------------------------------------------------ assignment

    def dispatch(self) -> None:
        """Give queued jobs to idle runners in ``dispatch_order`` (highest priority first, then oldest, but
        newest first among those left behind); longest-idle runner first."""
        idle = sorted(
            (r for r in self.runners.values() if r.connected and r.info.state == "idle"),
            key=lambda r: r.idle_since,
        )
        for runner in idle:
            job = self._pop_queue()
            if job is None:
                return
            self._assign(runner, job)

    def _pop_queue(self) -> p.JobInfo | None:
        while self.queue:
            level, order, job_id = heapq.heappop(self.queue)
            job = self.jobs.get(job_id)
            if job is not None and job.state == "queued" and p.dispatch_order(job) == (level, order):
                return job
        return None

    def _assign(self, runner: Runner, job: p.JobInfo) -> None:
        job.attempts += 1
        job.state, job.runner = "running", runner.info.name
        job.started_at, job.finished_at = self.clock.time(), None
        job.exit_code = job.duration_s = job.passed = job.failed = job.skipped = None
        job.error, job.env, job.env_reused = "", "", False
        job.failed_tests, job.flaky_tests = [], []
        runner.info.state, runner.info.job = "busy", job.id
        runner.last_seen = self.clock.monotonic()  # its lease starts now: it heartbeats while it holds a job
        a = p.AttemptInfo(job_id=job.id, attempt=job.attempts, runner=runner.info.name, started_at=job.started_at)
        self.attempts[(job.id, job.attempts)] = a
        self._save(a)
        self._save(job)
        self._publish("job.started", job=job, runner=runner.info)
        self._effects.append(Send(runner.info.name, p.Assign(job_id=job.id, attempt=job.attempts, commit=job.commit,
                                                             branch=job.branch, repo_url=self.repo_url)))

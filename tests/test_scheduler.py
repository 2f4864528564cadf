"""The scheduling rules, one test each, on the Scheduler alone: no processes, sockets or event loop; a clock the
test moves. The wiring (effects carried out over real sockets) is tested with real processes elsewhere."""

from __future__ import annotations

import msgspec
import pytest

from tuici import wire as p
from tuici.dispatcher import scheduler as s
from tuici.store import Snapshot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def sha(n: int) -> str:
    return f"{n:02x}" * 20


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sched(clock) -> s.Scheduler:
    return s.Scheduler(heartbeat_timeout=5.0, max_attempts=3, repo_url="file:///repo", clock=clock)


def commit(sched: s.Scheduler, *numbers: int, branch: str = "main", order: p.Order = "oldest-first",
           untested: tuple[int, ...] = (), skipped: tuple[int, ...] = (), cancel_superseded: bool = False
           ) -> list[p.JobInfo]:
    """Report commits ``numbers`` as the observer would (oldest first: the rules that are not about the order
    of a backlog are shown with the plainer one); the jobs of those neither ``untested`` nor ``skipped``."""
    commits = [p.ReportedCommit(sha=sha(n), branch=branch, skipped=n in skipped) for n in numbers]
    sched.commits_seen(p.CommitsSeen(branch=branch, tip=commits[-1].sha, commits=commits,
                                     untested=[sha(n) for n in untested], order=order,
                                     cancel_superseded=cancel_superseded))
    newest = {job.commit: job for job in sched.jobs.values()}
    left_out = {sha(n) for n in untested}
    return [newest[c.sha] for c in commits if c.sha in newest and not c.skipped and c.sha not in left_out]


def join(sched: s.Scheduler, name: str, *held: p.HeldJob) -> s.Runner:
    runner = sched.register(p.Hello(role="runner", token="t", name=name, held=list(held)))
    assert runner is not None
    return runner


def sends(effects: list[s.Effect]) -> list[tuple[str, p.Message]]:
    return [(e.runner, e.message) for e in effects if isinstance(e, s.Send)]


def assigned(effects: list[s.Effect]) -> list[tuple[str, int]]:
    return [(runner, msg.job_id) for runner, msg in sends(effects) if isinstance(msg, p.Assign)]


def kinds(effects: list[s.Effect]) -> list[str]:
    return [e.kind for e in effects if isinstance(e, s.Publish)]


def result(job: p.JobInfo, **fields) -> p.JobResult:
    return p.JobResult(**{"job_id": job.id, "attempt": job.attempts, "exit_code": 0, "duration_s": 1.0,
                          "log_size": 0, **fields})


def test_a_new_commit_gets_a_queued_job_saved_and_published(sched):
    [job] = commit(sched, 1)
    effects = sched.effects()
    assert (job.state, job.commit, job.attempts) == ("queued", sha(1), 0)
    assert s.SaveJob(job) in effects and s.SaveTip("main", sha(1)) in effects
    assert kinds(effects) == ["commit.seen", "job.queued"]
    commit(sched, 1)
    assert len(sched.jobs) == 1  # a commit seen again gets no second job


def test_queued_jobs_go_by_priority_then_oldest(sched):
    older, newer, front = commit(sched, 1, 2, 3)
    sched.rerun(sha(3))  # the queued job moves ahead of every other
    sched.dispatch()
    sched.effects()
    for name in ("r1", "r2", "r3"):
        join(sched, name)
        sched.dispatch()
    assert [(r, job_id) for r, job_id in assigned(sched.effects())] == [
        ("r1", front.id), ("r2", older.id), ("r3", newer.id)]


def test_only_idle_connected_runners_are_given_jobs_longest_idle_first(sched, clock):
    first = join(sched, "first")
    clock.now += 1
    join(sched, "second")
    commit(sched, 1)
    sched.dispatch()
    assert assigned(sched.effects()) == [("first", 1)]
    commit(sched, 2, 3)
    sched.dispatch()
    assert assigned(sched.effects()) == [("second", 2)]  # first is busy: job 3 waits
    sched.runner_gone(join(sched, "third"), "gone")
    sched.effects()
    assert sched.jobs[3].state == "queued" and first.info.job == 1


@pytest.mark.parametrize(("fields", "state", "outcome", "error"), [
    ({"exit_code": 0}, "passed", "passed", ""),
    ({"exit_code": 1}, "failed", "failed", ""),
    ({"exit_code": None, "timed_out": True, "duration_s": 60.0}, "failed", "timeout", "timed out after 60 s"),
    ({"exit_code": None, "error": "no such command"}, "error", "error", "no such command"),
    ({"exit_code": -15, "cancelled": True}, "cancelled", "cancelled", ""),
])
def test_a_result_ends_the_job_and_its_attempt(sched, clock, fields, state, outcome, error):
    runner = join(sched, "r1")
    [job] = commit(sched, 1)
    sched.dispatch()
    sched.effects()
    clock.now += 3
    assert sched.result(runner, result(job, **fields)) is None
    effects = sched.effects()
    assert (job.state, job.error, job.finished_at) == (state, error, clock.now)
    attempt = sched.attempts[(job.id, 1)]
    assert (attempt.outcome, attempt.reason, attempt.ended_at) == (outcome, error, clock.now)
    assert effects[0] == s.CloseLog(job.id) and kinds(effects) == ["job.finished"]
    assert runner.info.state == "busy"  # until the result is durable
    sched.result_durable(runner)
    assert (runner.info.state, runner.info.job, runner.info.jobs_done) == ("idle", None, 1)
    assert kinds(sched.effects()) == ["runner.idle"]


def test_a_lost_runners_job_is_queued_again_and_ends_in_error_after_max_attempts(sched, clock):
    [job] = commit(sched, 1)
    for attempt in range(1, 4):
        runner = join(sched, f"r{attempt}")
        sched.dispatch()
        assert job.attempts == attempt
        sched.effects()
        sched.runner_gone(runner, "connection closed")
        effects = sched.effects()
        assert s.Disconnect(runner.info.name) in effects and runner.info.state == "lost"
        assert sched.attempts[(job.id, attempt)].outcome == "lost"
        if attempt < 3:
            assert job.state == "queued" and job.log_size == 0 and s.TruncateLog(job.id) in effects
            assert kinds(effects) == ["runner.lost", "job.requeued"]
    assert job.state == "error" and job.error == "gave up after 3 attempts: runner lost"


def test_a_runner_that_leaves_is_forgotten_and_its_job_requeued(sched):
    runner = join(sched, "r1")
    [job] = commit(sched, 1)
    sched.dispatch()
    sched.runner_gone(runner, "runner left", left=True)
    assert "r1" not in sched.runners and job.state == "queued"
    assert sched.attempts[(job.id, 1)].reason == "runner left"


def test_a_rerun_goes_ahead_of_every_job(sched):
    _, queued = commit(sched, 1, 2)
    reply = sched.rerun(sha(1)[:8])
    assert reply.ok and "moved to the front" in reply.message and reply.job.id == 1
    runner = join(sched, "r1")
    sched.dispatch()
    sched.result(runner, result(sched.jobs[1]))
    sched.result_durable(runner)
    reply = sched.rerun(sha(1))  # finished: a new job, above the one that was moved up
    assert reply.ok and reply.job.id == 3 and reply.job.priority == 2 > queued.priority
    sched.dispatch()
    assert runner.info.job == 3
    assert not sched.rerun(sha(1)).ok  # running already
    assert not sched.rerun(sha(1)[:3]).ok  # too short to be a prefix


def test_a_queued_job_is_cancelled_at_once(sched):
    [job] = commit(sched, 1)
    sched.effects()
    reply = sched.cancel(job.id)
    assert reply.ok and job.state == "cancelled" and kinds(sched.effects()) == ["job.finished"]
    join(sched, "r1")
    sched.dispatch()
    assert assigned(sched.effects()) == []
    assert not sched.cancel(job.id).ok and not sched.cancel(99).ok


def test_a_cancelled_running_job_its_runner_does_not_end_is_taken_back(sched, clock):
    runner = join(sched, "r1")
    job, following = commit(sched, 1, 2)
    sched.dispatch()
    sched.effects()
    assert sched.cancel(job.id).ok and job.state == "running"
    effects = sched.effects()
    assert sends(effects) == [("r1", p.CancelJob(job_id=job.id))]
    assert s.TakeBackAt(job.id, 1, clock.now + s.CANCEL_GRACE) in effects
    sched.cancel(job.id)
    assert not any(isinstance(e, s.TakeBackAt) for e in sched.effects())  # one take-back per cancel

    clock.now += s.CANCEL_GRACE
    assert sched.take_back(job.id, 1) is runner
    assert job.state == "cancelled" and "took it back" in sched.attempts[(job.id, 1)].reason
    assert runner.info.job == job.id  # until the end is durable
    sched.effects()
    sched.drop_taken_back(runner)
    effects = sched.effects()
    [(_, drop), (_, assign)] = sends(effects)
    assert isinstance(drop, p.ResultAck) and (drop.job_id, drop.accepted) == (job.id, False)
    assert isinstance(assign, p.Assign) and assign.job_id == following.id
    # What the runner sends about the job later is dropped, or rejected.
    assert sched.output(runner, p.Output(job_id=job.id, attempt=1, offset=0, data=b"late")) == b""
    assert sched.result(runner, result(job, attempt=1)) is not None


def test_a_cancelled_job_that_ends_in_time_is_not_taken_back(sched):
    runner = join(sched, "r1")
    [job] = commit(sched, 1)
    sched.dispatch()
    sched.cancel(job.id)
    sched.result(runner, result(job, exit_code=-15))
    assert job.state == "cancelled"  # whatever the runner says, once cancelled
    sched.result_durable(runner)
    sched.effects()
    assert sched.take_back(job.id, 1) is None and sched.effects() == []


def test_a_runner_quiet_past_the_heartbeat_timeout_is_lost(sched, clock):
    quiet, talking = join(sched, "quiet"), join(sched, "talking")
    [job] = commit(sched, 1)
    sched.dispatch()
    assert job.runner == "quiet"
    clock.now += 5.0
    sched.heard_from(talking)
    sched.expire()
    assert quiet.info.state == "busy"  # not past the timeout yet
    clock.now += 0.5
    sched.effects()
    sched.expire()
    effects = sched.effects()
    assert quiet.info.state == "lost" and talking.info.state == "busy"
    assert assigned(effects) == [("talking", job.id)] and job.attempts == 2


def test_an_idle_runner_is_never_lost_for_its_silence_and_its_lease_starts_with_a_job(sched, clock):
    """An idle runner sends nothing (its closed connection says it is gone): only one holding a job heartbeats,
    and the dispatcher's watch sleeps while nothing can expire."""
    runner = join(sched, "quiet")
    assert sched.next_expiry() is None
    clock.now += 3600.0
    sched.expire()
    assert runner.info.state == "idle"
    [job] = commit(sched, 1)
    sched.dispatch()
    assert job.runner == "quiet" and sched.next_expiry() == clock.now + 5.0  # from the assignment, not an hour ago
    clock.now += 5.0
    sched.expire()
    assert runner.info.state == "busy"
    clock.now += 0.1
    sched.effects()
    sched.expire()
    assert runner.info.state == "lost" and (job.state, job.attempts) == ("queued", 1)
    assert "job.requeued" in kinds(sched.effects()) and sched.next_expiry() is None


def test_a_runner_lost_while_its_result_is_made_durable_stays_lost_and_its_name_is_free(sched):
    runner = join(sched, "r1")
    [job] = commit(sched, 1)
    sched.dispatch()
    assert sched.result(runner, result(job)) is None
    sched.runner_gone(runner, "connection closed")  # while the result is being written
    sched.result_durable(runner)
    assert job.state == "passed" and runner.info.state == "lost"
    assert sched.register(p.Hello(role="runner", token="t", name="r1")) is not None  # it may come back


def test_a_result_for_an_attempt_no_longer_assigned_is_rejected(sched):
    first = join(sched, "first")
    [job] = commit(sched, 1)
    sched.dispatch()
    sched.runner_gone(first, "lost")
    second = join(sched, "second")
    sched.dispatch()
    assert job.runner == "second" and job.attempts == 2
    assert sched.result(first, result(job, attempt=1)) == "this attempt is no longer assigned to this runner"
    assert sched.result(second, result(job, attempt=1)) is not None
    assert job.state == "running"
    with pytest.raises(p.ProtocolError):
        sched.output(first, p.Output(job_id=job.id, attempt=1, offset=0, data=b"x"))


def test_output_is_kept_once_and_without_gaps(sched):
    runner = join(sched, "r1")
    [job] = commit(sched, 1)
    sched.dispatch()
    first = p.Output(job_id=job.id, attempt=1, offset=0, data=b"hello ")
    assert sched.output(runner, first) == b"hello "
    assert sched.output_written(runner, first, b"hello ") == 0
    again = p.Output(job_id=job.id, attempt=1, offset=0, data=b"hello world")  # resent after a reconnect
    assert sched.output(runner, again) == b"world"
    assert sched.output_written(runner, again, b"world") == 6 and job.log_size == 11
    with pytest.raises(p.ProtocolError):
        sched.output(runner, p.Output(job_id=job.id, attempt=1, offset=20, data=b"gap"))


def test_a_returning_runner_keeps_its_job_and_a_name_in_use_is_refused(sched):
    runner = join(sched, "r1")
    [job] = commit(sched, 1)
    sched.dispatch()
    assert sched.register(p.Hello(role="runner", token="t", name="r1")) is None
    sched.runner_gone(runner, "connection closed")  # the job is requeued ...
    again = join(sched, "r1", p.HeldJob(job_id=job.id, attempt=1))
    assert again.info.job is None  # ... so it is no longer its own
    sched.dispatch()
    sched.effects()
    sched.runner_gone(again, "connection closed")
    sched.effects()
    sched.jobs[job.id].state = "running"  # as after a restart, before runners are back
    sched.jobs[job.id].runner, sched.jobs[job.id].attempts = "r1", 3
    back = join(sched, "r1", p.HeldJob(job_id=job.id, attempt=3))
    welcome = sends(sched.effects())[0][1]
    assert back.info.job == job.id and isinstance(welcome, p.Welcome) and welcome.log_offsets == {job.id: 0}


def test_after_a_restart_running_jobs_no_runner_came_back_for_are_queued_again(sched, clock):
    running = p.JobInfo(id=1, commit=sha(1), branch="main", state="running", runner="gone", attempts=1)
    kept = p.JobInfo(id=2, commit=sha(2), branch="main", state="running", runner="back", attempts=1)
    sched.load(Snapshot(meta={}, commits=[], tips={}, jobs=[(running, 0), (kept, 0)], last_seq=0,
                        attempts=[p.AttemptInfo(job_id=1, attempt=1, runner="gone", started_at=0.0)]))
    join(sched, "back", p.HeldJob(job_id=2, attempt=1))
    clock.now += 5.0 + 0.1
    sched.heard_from(sched.runners["back"])
    sched.expire()
    assert running.state == "queued" and kept.state == "running"
    assert sched.attempts[(1, 1)].outcome == "lost"


# ---------------------------------------------------------------------- a branch broken or fixed


def finish(sched: s.Scheduler, runner: s.Runner, job: p.JobInfo, exit_code: int | None = 0, **fields) -> list[s.Effect]:
    """Run ``job`` on ``runner`` to its result; the effects of that result."""
    sched.dispatch()
    assert runner.info.job == job.id
    sched.effects()
    sched.result(runner, result(job, exit_code=exit_code, **fields))
    effects = sched.effects()
    sched.result_durable(runner)
    sched.effects()
    return effects


def branch_events(effects: list[s.Effect]) -> list[tuple[str, int, str]]:
    return [(e.kind, e.fields["job"].id, e.fields["message"]) for e in effects
            if isinstance(e, s.Publish) and e.kind.startswith("branch.") and e.kind != "branch.deleted"]


def test_a_branch_that_turns_from_passing_to_failing_and_back_is_published_broken_then_fixed(sched):
    runner = join(sched, "r1")
    good, bad, again, fixed = commit(sched, 1, 2, 3, 4)
    assert branch_events(finish(sched, runner, good)) == []  # a first verdict: nothing changed
    [(kind, job_id, message)] = branch_events(finish(sched, runner, bad, exit_code=1))
    assert (kind, job_id) == ("branch.broken", bad.id)
    assert message == f"main fails at {sha(2)[:10]} (job 2); it passed at {sha(1)[:10]} (job 1)"
    assert branch_events(finish(sched, runner, again, exit_code=1)) == []  # still failing
    [(kind, job_id, message)] = branch_events(finish(sched, runner, fixed))
    assert (kind, job_id) == ("branch.fixed", fixed.id) and message.startswith("main passes again at")


def test_a_branch_event_carries_the_commit_and_the_job_as_they_were(sched):
    runner = join(sched, "r1")
    good, bad = commit(sched, 1, 2)
    finish(sched, runner, good)
    effects = finish(sched, runner, bad, exit_code=1, failed=3)
    [event] = [e for e in effects if isinstance(e, s.Publish) and e.kind == "branch.broken"]
    assert event.fields["commit"] == sched.commits[sha(2)]
    assert event.fields["job"].failed == 3 and event.fields["job"] is not bad  # a copy


def test_an_older_commits_late_result_does_not_change_the_branch(sched):
    """Jobs finish out of order: the newer commit's verdict stands."""
    first, second = join(sched, "first"), join(sched, "second")
    old, new = commit(sched, 1, 2)
    sched.dispatch()
    assert (first.info.job, second.info.job) == (old.id, new.id)
    sched.result(second, result(new, exit_code=0))
    sched.result(first, result(old, exit_code=1))
    assert branch_events(sched.effects()) == [] and sched.branch_verdicts["main"].job_id == new.id


def test_a_rerun_of_the_tip_that_passes_fixes_the_branch(sched):
    runner = join(sched, "r1")
    good, flaky = commit(sched, 1, 2)
    finish(sched, runner, good)
    finish(sched, runner, flaky, exit_code=1)
    rerun = sched.rerun(sha(2)).job
    assert [kind for kind, _, _ in branch_events(finish(sched, runner, rerun))] == ["branch.fixed"]


def test_error_and_cancelled_are_no_verdict_and_branches_are_judged_apart(sched):
    runner = join(sched, "r1")
    good, broken_setup, cancelled = commit(sched, 1, 2, 3)
    other = commit(sched, 4, branch="feature")[0]
    finish(sched, runner, good)
    assert branch_events(finish(sched, runner, broken_setup, exit_code=None, error="setup failed")) == []
    sched.cancel(cancelled.id)
    assert branch_events(finish(sched, runner, other, exit_code=1)) == []  # feature's first verdict
    assert sched.branch_verdicts["main"].job_id == good.id and sched.branch_verdicts["feature"].state == "failed"


def test_verdicts_are_rebuilt_from_the_store_so_a_restart_publishes_only_new_changes(clock):
    jobs = [p.JobInfo(id=1, commit=sha(1), branch="main", state="passed", finished_at=10.0),
            p.JobInfo(id=2, commit=sha(2), branch="main", state="failed", finished_at=20.0)]
    sched = s.Scheduler(clock=clock)
    sched.load(Snapshot(meta={}, commits=[p.CommitInfo(sha=sha(n), branch="main") for n in (1, 2)], tips={},
                        jobs=[(job, 0) for job in jobs], attempts=[], last_seq=0))
    assert sched.effects() == [] and sched.branch_verdicts["main"].state == "failed"
    runner = join(sched, "r1")
    [fix] = commit(sched, 3)
    assert [kind for kind, _, _ in branch_events(finish(sched, runner, fix))] == ["branch.fixed"]


def test_a_deleted_branch_forgets_its_verdict(sched):
    runner = join(sched, "r1")
    [bad] = commit(sched, 1, branch="topic")
    finish(sched, runner, bad, exit_code=1)
    sched.branch_gone(p.BranchGone(branch="topic"))
    [good] = commit(sched, 2, branch="topic")  # a new branch of the same name
    assert branch_events(finish(sched, runner, good)) == []


# ---------------------------------------------------------------------- retention


def finished_jobs(sched: s.Scheduler, clock: Clock, sizes: list[int], every: float = s.DAY) -> list[p.JobInfo]:
    """Jobs that finished ``every`` seconds apart, oldest first, with logs of ``sizes`` bytes."""
    runner = join(sched, "r-history")
    jobs = commit(sched, *range(100, 100 + len(sizes)))
    for job, size in zip(jobs, sizes, strict=True):
        sched.dispatch()
        sched.output_written(runner, p.Output(job_id=job.id, attempt=1, offset=0, data=b""), b"x" * size)
        sched.result(runner, result(job))
        sched.result_durable(runner)
        clock.now += every
    sched.effects()
    return jobs


def test_retention_deletes_logs_older_than_keep_days_oldest_first(sched, clock):
    jobs = finished_jobs(sched, clock, [10] * 5)  # finished 5, 4, 3, 2 and 1 days ago
    pruned = sched.prune(keep_days=2.5, keep_bytes=10**9)
    assert [j.id for j in pruned] == [jobs[0].id, jobs[1].id, jobs[2].id]
    assert sched.effects() == [] and not any(j.log_deleted for j in jobs)  # until the files are gone
    sched.logs_deleted(pruned)
    assert all(j.log_deleted for j in pruned) and not jobs[3].log_deleted
    assert [e for e in sched.effects() if isinstance(e, s.SaveJob)] == [s.SaveJob(j) for j in pruned]
    assert sched.kept_logs() == (20, 2) and sched.prune(keep_days=2.5, keep_bytes=10**9) == []


def test_retention_deletes_the_oldest_logs_past_keep_bytes_but_never_a_queued_or_running_jobs(sched, clock):
    jobs = finished_jobs(sched, clock, [100, 200, 300, 400], every=60)
    running, queued = commit(sched, 1, 2)
    sched.dispatch()
    runner = sched.runners[running.runner]
    sched.output_written(runner, p.Output(job_id=running.id, attempt=1, offset=0, data=b""), b"x" * 5000)
    pruned = sched.prune(keep_days=30, keep_bytes=5400)  # the running job's 5000 count: 400 bytes are left
    assert [j.id for j in pruned] == [j.id for j in jobs[:3]]
    sched.logs_deleted(pruned)
    assert not running.log_deleted and not queued.log_deleted and not jobs[3].log_deleted
    assert [j.id for j in sched.prune(keep_days=30, keep_bytes=1)] == [jobs[3].id]  # never the running one
# ------------------------------------------------------------------ skip, supersede, try


def test_a_skipped_commit_is_recorded_and_gets_no_job(sched):
    [job] = commit(sched, 1, 2, skipped=(1,))
    effects = sched.effects()
    assert job.commit == sha(2) and sha(1) not in sched.active_job and len(sched.jobs) == 1
    assert sched.commits[sha(1)].skipped and s.SaveCommit(sched.commits[sha(1)], 1000.0) in effects
    assert kinds(effects) == ["commit.seen", "commit.seen", "job.queued"]
    reply = sched.rerun(sha(1))  # asked for: it gets one
    assert reply.ok and reply.job.commit == sha(1)


def test_a_newer_commit_cancels_the_branchs_queued_jobs_of_older_commits(sched):
    """Three queued commits on main; a fourth arrives: the three are cancelled, the running one and the other
    branch's job are not."""
    runner = join(sched, "r1")
    [running] = commit(sched, 1)
    sched.dispatch()
    queued = commit(sched, 2, 3, 4, cancel_superseded=True)  # the newest of a push supersedes the others
    assert [j.state for j in queued] == ["cancelled", "cancelled", "queued"]
    [other] = commit(sched, 9, branch="feature")
    sched.effects()
    [newest] = commit(sched, 5, cancel_superseded=True)
    effects = sched.effects()
    assert running.state == "running" and runner.info.job == running.id
    assert queued[2].state == "cancelled" and queued[2].error == f"superseded by {sha(5)}"
    assert newest.state == "queued" and other.state == "queued"
    finished = [e for e in effects if isinstance(e, s.Publish) and e.kind == "job.finished"]
    assert [(e.fields["job"].id, e.fields["message"]) for e in finished] == [(queued[2].id, f"superseded by {sha(5)}")]
    assert s.SaveJob(queued[2]) in effects


def test_without_cancel_superseded_older_queued_jobs_stay(sched):
    older = commit(sched, 1, 2)
    commit(sched, 3)
    assert [j.state for j in older] == ["queued", "queued"]


def test_superseding_spares_reruns_tries_and_commits_that_are_a_tip(sched):
    [rerun, merged, plain] = commit(sched, 1, 2, 3)
    sched.rerun(sha(1))  # asked for: stays
    sched.commits_seen(p.CommitsSeen(branch="release", tip=sha(2), commits=[]))  # another branch's tip now
    tried = sched.try_commit(p.CommitInfo(sha=sha(7), branch="main")).job
    commit(sched, 4, cancel_superseded=True)
    assert (rerun.state, merged.state, plain.state, tried.state) == ("queued", "queued", "cancelled", "queued")


def test_a_deleted_branchs_queued_jobs_are_cancelled_when_its_config_says_so(sched):
    [kept] = commit(sched, 1, branch="old")
    [dropped] = commit(sched, 2, branch="gone")
    sched.branch_gone(p.BranchGone(branch="old"))
    sched.branch_gone(p.BranchGone(branch="gone", cancel_queued=True))
    assert kept.state == "queued"
    assert dropped.state == "cancelled" and dropped.error == "branch gone was deleted"
    assert "gone" not in sched.tips


def test_a_try_is_a_job_of_its_own_kind_at_the_front(sched):
    commit(sched, 1, 2)
    moved = sched.rerun(sha(2)).job
    sched.effects()
    reply = sched.try_commit(p.CommitInfo(sha=sha(7), branch="main", subject="tuici try", skipped=True))
    job = reply.job
    assert reply.ok and job.kind == "try" and job.branch == "main" and job.priority > moved.priority > 0
    assert not sched.commits[sha(7)].skipped  # a try is asked for: its message has no say
    effects = sched.effects()
    assert kinds(effects) == ["commit.seen", "job.queued"] and s.SaveJob(job) in effects
    again = sched.try_commit(p.CommitInfo(sha=sha(7), branch="main"))
    assert again.job.id == job.id and len(sched.jobs) == 3  # the same snapshot is not queued twice
    runner = join(sched, "r1")
    sched.dispatch()
    assert runner.info.job == job.id
    sched.result(runner, result(job, exit_code=1))
    sched.result_durable(runner)
    assert job.state == "failed"
    rerun = sched.rerun(sha(7)).job
    assert rerun.kind == "try"  # a rerun of a try is a try


def test_tries_are_known_after_a_restart(sched):
    tried = p.JobInfo(id=1, commit=sha(7), branch="main", state="passed", kind="try")
    sched.load(Snapshot(meta={}, commits=[p.CommitInfo(sha=sha(7), branch="main")], tips={}, jobs=[(tried, 5)],
                        last_seq=0, attempts=[]))
    assert sched.rerun(sha(7)).job.kind == "try"


def test_a_failing_try_says_nothing_of_its_branch_and_is_its_own_notification(sched):
    """A try tests a work tree, not a commit of the branch: the branch stays green, and the try's end is told."""
    from tuici.notify import notification_for

    runner = join(sched, "r1")
    [good] = commit(sched, 1)
    finish(sched, runner, good)
    tried = sched.try_commit(p.CommitInfo(sha=sha(7), branch="main")).job
    effects = finish(sched, runner, tried, exit_code=1)
    assert branch_events(effects) == [] and sched.branch_verdicts["main"].job_id == good.id
    [ended] = [e for e in effects if isinstance(e, s.Publish) and e.kind == "job.finished"]
    notice = notification_for(p.Event(seq=1, ts=0.0, kind="job.finished", job=ended.fields["job"]))
    assert notice is not None and notice.kind == "try" and notice.title == "try on main failed"
    assert notice.environment()["TUICI_EVENT"] == "try"
# ------------------------------------------------------------------ the order of a backlog, and bisections


def finish_next(sched: s.Scheduler, runner: s.Runner, first_bad: int | None = None) -> p.JobInfo | None:
    """End the runner's job (failing from commit ``first_bad`` on, passing before it; an idle runner is given
    one first), then hand it the next; the job it ended."""
    if runner.info.job is None:
        sched.dispatch()
    job = sched.jobs[runner.info.job] if runner.info.job is not None else None
    if job is not None:
        number = int(job.commit[:2], 16)
        failed = first_bad is not None and number >= first_bad
        sched.result(runner, result(job, exit_code=1 if failed else 0))
        sched.result_durable(runner)
    sched.dispatch()
    return job


def order_tested(sched: s.Scheduler, runner: s.Runner, first_bad: int | None = None) -> list[int]:
    """Commit numbers in the order one runner tests them until the queue is empty."""
    order = []
    while (job := finish_next(sched, runner, first_bad)) is not None:
        order.append(int(job.commit[:2], 16))
    return order


def test_newest_first_the_newest_commit_of_each_branch_goes_first_then_the_rest_newest_first(sched):
    runner = join(sched, "r1")
    commit(sched, 1, order="newest-first")
    sched.dispatch()
    assert runner.info.job == 1  # busy: a backlog builds up behind it
    commit(sched, 2, 3, 4, order="newest-first")
    commit(sched, 10, branch="feature", order="newest-first")
    commit(sched, 5, order="newest-first")
    levels = {int(j.commit[:2], 16): j.priority for j in sched.jobs.values() if j.state == "queued"}
    assert levels == {2: p.Priority.BACKFILL, 3: p.Priority.BACKFILL, 4: p.Priority.SUPERSEDED,
                      10: p.Priority.NEW, 5: p.Priority.NEW}
    assert order_tested(sched, runner) == [1, 10, 5, 4, 3, 2]


def test_newest_first_the_pushed_tips_left_behind_go_before_the_other_commits_of_their_pushes(sched):
    runner = join(sched, "r1")
    commit(sched, 1, order="newest-first")
    sched.dispatch()
    for push in ((2, 3), (4, 5), (6, 7)):  # three pushes of two commits each (a merge and its branch's commit)
        commit(sched, *push, order="newest-first")
    assert order_tested(sched, runner) == [1, 7, 5, 3, 6, 4, 2]


def test_oldest_first_keeps_a_backlog_in_commit_order(sched):
    runner = join(sched, "r1")
    commit(sched, 1, 2, 3)
    commit(sched, 4, 5)
    assert order_tested(sched, runner) == [1, 2, 3, 4, 5]


def test_a_rerun_goes_ahead_of_new_commits_and_older_commits_behind_them(sched):
    runner = join(sched, "r1")
    commit(sched, 1, 2, 3, order="newest-first")
    sched.dispatch()
    assert not sched.rerun(sha(3)).ok  # running already
    sched.rerun(sha(1))  # queued behind 3: moved to the front
    commit(sched, 4, order="newest-first")
    assert sched.jobs[1].priority == p.Priority.FRONT
    assert order_tested(sched, runner) == [3, 1, 4, 2]


def bisection_setup(sched: s.Scheduler, n: int, **report) -> s.Runner:
    """Commit 0 tested and passed; commits 1..n reported at once (``report``: how); the runner testing n."""
    runner = join(sched, "r1")
    commit(sched, 0)
    assert finish_next(sched, runner) is not None
    commit(sched, *range(1, n + 1), order="newest-first", **report)
    sched.dispatch()
    assert sched.jobs[runner.info.job].commit == sha(n)
    return runner


def test_a_bisection_over_coalesced_commits_finds_the_first_failing_one_behind_new_commits(sched):
    runner = bisection_setup(sched, 16, untested=tuple(range(1, 16)))
    assert finish_next(sched, runner, first_bad=11).commit == sha(16)
    [bisection] = sched.bisections.values()
    assert (bisection.info.good, bisection.info.bad, bisection.info.state) == (sha(0), sha(16), "running")
    probe = sched.jobs[runner.info.job]
    assert (probe.commit, probe.priority) == (sha(8), p.Priority.BISECT)
    commit(sched, 17, order="newest-first")  # pushed while the bisection runs: tested before its next job
    assert order_tested(sched, runner, first_bad=11) == [8, 17, 12, 10, 11]
    info = bisection.info
    assert (info.state, info.first_bad) == ("found", sha(11))
    assert [int(sched.jobs[j].commit[:2], 16) for j in info.jobs] == [8, 12, 10, 11]
    assert sched.bisecting == {}


def test_a_newer_commit_that_passes_abandons_the_bisection_and_ends_the_job_it_queued(sched):
    runner = bisection_setup(sched, 8, untested=tuple(range(1, 8)))
    finish_next(sched, runner, first_bad=5)
    probe = sched.jobs[runner.info.job]  # commit 4 is being tested
    commit(sched, 9, order="newest-first")
    finish_next(sched, runner, first_bad=5)  # 4 passed: the bisection queues 6; 9 goes first
    queued = sched.jobs[sched.active_job[sha(6)]]
    assert probe.commit == sha(4) and queued.priority == p.Priority.BISECT
    sched.effects()
    finish_next(sched, runner)  # 9 passes: the branch is fixed
    info = sched.bisections[1].info
    assert info.state == "abandoned" and info.first_bad is None and queued.state == "cancelled"
    assert "bisection.abandoned" in kinds(sched.effects())


def test_a_bisection_moves_up_queued_older_commits_and_puts_them_back_when_it_ends(sched):
    runner = bisection_setup(sched, 8)  # every commit queued: 8 first, 1..7 behind it
    finish_next(sched, runner, first_bad=7)
    probe = sched.jobs[runner.info.job]
    assert probe.commit == sha(4) and probe.priority == p.Priority.BISECT  # moved up, not queued again
    commit(sched, 9, order="newest-first")
    finish_next(sched, runner, first_bad=7)  # 4 passed: 6 moves up, behind 9
    moved = sched.jobs[sched.active_job[sha(6)]]
    assert (moved.state, moved.priority) == ("queued", p.Priority.BISECT)
    assert sched.bisections[1].info.jobs == [probe.id, moved.id]
    finish_next(sched, runner)  # 9 passed: the branch is fixed
    assert sched.bisections[1].info.state == "abandoned"
    assert (moved.state, moved.priority) == ("queued", p.Priority.BACKFILL)  # back where it was
    assert order_tested(sched, runner) == [7, 6, 5, 3, 2, 1]


def test_cancelling_a_bisection_job_abandons_it_for_good(sched):
    runner = bisection_setup(sched, 4, untested=(1, 2, 3))
    finish_next(sched, runner, first_bad=3)
    probe = sched.jobs[runner.info.job]
    assert sched.cancel(probe.id).ok
    assert sched.bisections[1].info.state == "abandoned"
    sched.result(runner, result(probe, exit_code=-15, cancelled=True))
    sched.result_durable(runner)
    sched.dispatch()
    assert runner.info.job is None and len(sched.bisections) == 1  # not started again for the same failure


def test_a_restarted_scheduler_goes_on_with_a_running_bisection(sched, clock):
    runner = bisection_setup(sched, 8, untested=tuple(range(1, 8)))
    finish_next(sched, runner, first_bad=3)
    probe = sched.jobs[runner.info.job]
    saved = sched.effects()  # what the store was told, as it was last
    commits = [e.commit for e in saved if isinstance(e, s.SaveCommit)]
    jobs = {e.job.id: msgspec.structs.replace(e.job) for e in saved if isinstance(e, s.SaveJob)}
    bisections = {e.id: (e.id, e.info, e.made) for e in saved if isinstance(e, s.SaveBisection)}
    again = s.Scheduler(clock=clock)
    again.load(Snapshot(meta={}, commits=commits, tips={}, jobs=[(j, j.priority) for j in jobs.values()],
                        attempts=[], last_seq=0, bisections=list(bisections.values())))
    assert again.bisecting == {"main": 1}
    runner = join(again, "r1", p.HeldJob(job_id=probe.id, attempt=1))
    assert order_tested(again, runner, first_bad=3) == [4, 2, 3]  # 4: the job queued before the restart
    assert again.bisections[1].info.first_bad == sha(3)

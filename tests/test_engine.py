"""The core engine end to end: real dispatcher, observer and runner processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import time

from conftest import toml_command, wait_for


def test_passing_and_failing_commits_give_passed_and_failed_jobs_with_output(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    first = repo.head()
    assert cluster.wait_job(first).state == "passed"

    good = repo.commit("good", config=toml_command("echo all good; exit 0"))
    job = cluster.wait_job(good)
    assert (job.state, job.exit_code) == ("passed", 0)
    assert "all good" in cluster.log_of(job.id)

    bad = repo.commit("bad", config=toml_command("echo broken >&2; exit 3"))
    job = cluster.wait_job(bad)
    assert (job.state, job.exit_code) == ("failed", 3)
    assert "broken" in cluster.log_of(job.id)
    assert job.runner == "r1" and job.attempts == 1 and job.duration_s is not None


def test_two_runners_work_in_parallel(repo, cluster):
    repo.commit("slow", config=toml_command("sleep 1.5; echo $TUICI_JOB_ID"))
    cluster.start_runner("r1")
    cluster.start_runner("r2")
    cluster.start_observer()
    wait_for(lambda: len(cluster.status().runners) == 2, message="two runners")
    first = repo.head()
    cluster.wait_job(first)
    a = repo.commit("a")
    b = repo.commit("b")
    ja, jb = cluster.wait_job(a), cluster.wait_job(b)
    assert ja.state == jb.state == "passed"
    assert {ja.runner, jb.runner} == {"r1", "r2"}
    # Both ran at the same time: each started before the other finished.
    assert ja.started_at < jb.finished_at and jb.started_at < ja.finished_at


def test_a_burst_of_20_commits_gives_20_jobs_all_finished(repo, cluster):
    cluster.start_runner("r1")
    cluster.start_runner("r2")
    cluster.start_observer()
    cluster.wait_job(repo.head())
    shas = [repo.commit(f"burst {i}") for i in range(20)]
    for sha in shas:
        assert cluster.wait_job(sha).state == "passed"
    jobs = cluster.jobs()
    assert sorted(j.commit for j in jobs if j.commit in shas) == sorted(shas)  # exactly one job each


def test_runner_killed_mid_job_has_its_job_finished_by_another(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    sha = repo.commit("slow", config=toml_command("echo started; sleep 2; echo finished"))
    running = cluster.wait_job(sha, states={"running"})
    assert running.runner == "r1"
    wait_for(lambda: "started" in cluster.log_of(running.id), message="output from the first attempt")
    cluster.start_runner("r2")
    cluster.kill("r1", signal.SIGKILL)
    job = cluster.wait_job(sha)
    assert (job.state, job.runner, job.attempts) == ("passed", "r2", 2)
    attempts = [a for a in cluster.status().attempts if a.job_id == job.id]
    assert [(a.runner, a.outcome, a.reason) for a in attempts] == [("r1", "lost", "runner lost"), ("r2", "passed", "")]
    log = cluster.log_of(job.id)
    assert log.count("\nstarted\n") == 1 and log.rstrip().endswith("\nfinished")
    runners = {r.name: r.state for r in cluster.status().runners}
    assert runners["r1"] == "lost"


def test_dispatcher_killed_and_restarted_loses_no_job(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    running = repo.commit("running", config=toml_command("echo one; sleep 2; echo two"))
    cluster.wait_job(running, states={"running"})
    queued = [repo.commit(f"queued {i}") for i in range(3)]
    wait_for(lambda: all(cluster.job_for(s) is not None for s in queued), message="queued jobs")
    cluster.kill("dispatcher", signal.SIGKILL)
    late = repo.commit("made while the dispatcher is down")
    time.sleep(0.5)
    cluster.start_dispatcher()
    for sha in [running, *queued, late]:
        assert cluster.wait_job(sha).state == "passed"
    job = cluster.job_for(running)
    # The runner reconnected while still running its job, kept it and delivered its result.
    assert job.attempts == 1 and job.runner == "r1"
    assert cluster.log_of(job.id).rstrip().endswith("two")
    assert len([j for j in cluster.jobs() if j.commit in {running, *queued, late}]) == 5


def test_commits_made_while_the_observer_is_down_are_tested_after_it_returns(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    cluster.kill("observer", signal.SIGKILL)
    missed = [repo.commit(f"missed {i}") for i in range(3)]
    repo.git("checkout", "-q", "-b", "feature")
    on_branch = repo.commit("on a new branch")
    repo.git("checkout", "-q", "main")
    time.sleep(0.3)
    assert all(cluster.job_for(s) is None for s in missed)
    cluster.start_observer()
    for sha in [*missed, on_branch]:
        assert cluster.wait_job(sha).state == "passed"
    assert cluster.job_for(on_branch).branch == "feature"


def test_hanging_test_is_killed_at_its_timeout_with_its_children(repo, cluster):
    import psutil

    marker = f"300.{os.getpid()}"  # a sleep no other process runs (its pid inside the sandbox means nothing here)
    cluster.start_observer()
    cluster.start_runner("r1")
    sha = repo.commit("hangs", config=toml_command(f"sleep {marker} & echo started; wait", timeout=1))
    job = cluster.wait_job(sha)
    assert job.state == "failed" and "timed out" in job.error
    assert "timed out after 1 s" in cluster.log_of(job.id)

    def sleeping() -> list[psutil.Process]:
        return [proc for proc in psutil.process_iter(["cmdline", "status"])
                if proc.info["cmdline"] == ["sleep", marker] and proc.info["status"] != psutil.STATUS_ZOMBIE]

    wait_for(lambda: not sleeping(), 5, message="the test's child to be gone")


def test_cancel_a_running_job_and_rerun_its_commit(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    sha = repo.commit("slow", config=toml_command("echo go; sleep 30"))
    job = cluster.wait_job(sha, states={"running"})
    reply = cluster.control(lambda c: c.cancel(job.id))
    assert reply.ok, reply.message
    cancelled = cluster.wait_job(sha, timeout=10)
    assert cancelled.state == "cancelled"
    assert "cancelled" in cluster.log_of(job.id)

    reply = cluster.control(lambda c: c.rerun(sha[:8]))
    assert reply.ok, reply.message
    assert reply.job.id != job.id
    again = cluster.wait_job(sha, states={"running"})
    assert again.id == reply.job.id
    reply = cluster.control(lambda c: c.cancel(again.id))
    assert reply.ok, reply.message
    assert cluster.wait_job(sha).state == "cancelled"


def test_cancel_a_queued_job_and_rerun_jumps_the_queue(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    blocker = repo.commit("blocker", config=toml_command("sleep 1"))
    cluster.wait_job(blocker, states={"running"})
    waiting = [repo.commit(f"w{i}") for i in range(3)]
    wait_for(lambda: all(cluster.job_for(s) for s in waiting), message="queued jobs")
    to_cancel = cluster.job_for(waiting[0])
    assert cluster.control(lambda c: c.cancel(to_cancel.id)).ok
    assert cluster.job_for(waiting[0]).state == "cancelled"
    # Rerunning the newest queued commit moves it to the front of the queue.
    reply = cluster.control(lambda c: c.rerun(waiting[2]))
    assert reply.ok and "front" in reply.message
    for sha in waiting[1:]:
        cluster.wait_job(sha)
    j1, j2 = cluster.job_for(waiting[1]), cluster.job_for(waiting[2])
    assert j2.started_at < j1.started_at
    bad = cluster.control(lambda c: c.rerun("0000000"))
    assert not bad.ok and "no commit" in bad.message


def test_a_result_finished_while_the_dispatcher_is_down_is_delivered_when_it_returns(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    sha = repo.commit("quick", config=toml_command("echo begin; sleep 0.5; echo end"))
    cluster.wait_job(sha, states={"running"})
    cluster.kill("dispatcher", signal.SIGKILL)
    time.sleep(2.0)  # the job ends while nobody is listening; the runner holds output and result
    cluster.start_dispatcher()
    job = cluster.wait_job(sha)
    assert (job.state, job.attempts, job.runner) == ("passed", 1, "r1")
    log = cluster.log_of(job.id)
    assert log.count("\nbegin\n") == 1 and log.rstrip().endswith("\nend")
    assert job.log_size == len(log.encode())

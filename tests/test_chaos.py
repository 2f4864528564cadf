"""Chaos: processes killed at random while commits pour in, a hung runner, and a state dir whose disk fills up.

The chaos run is seeded (``TUICI_CHAOS_SEED``): the commits, which of them fail, and the sequence of kill
intervals and victims repeat exactly; only real process timing varies. It is bounded to about two minutes;
``TUICI_SOAK=1`` runs a much longer one. Whatever is killed, every commit ends with exactly one result, the right
one, with every attempt accounted for and its whole log stored, and nothing is left running.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tuici import wire as p
from tuici.supervisor import Supervisor
from tuici.wire import Control, NoDispatcher

from conftest import job_processes, toml_command, tuici_processes, wait_for

SEED = int(os.environ.get("TUICI_CHAOS_SEED", "4"))
SOAK = bool(os.environ.get("TUICI_SOAK"))
CHAOS_COMMAND = "echo begin $TUICI_COMMIT; sleep 0.3; echo end-of-log $TUICI_COMMIT; test ! -e FAIL"


@dataclass
class ChaosReport:
    commits: int = 0
    kills: Counter = field(default_factory=Counter)
    restarts: Counter = field(default_factory=Counter)
    attempts: int = 0
    lost_attempts: int = 0
    lost_commits: int = 0  # without exactly one job, or with a job that ended otherwise than its tests say
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"chaos (seed {SEED}): {self.commits} commits, kills {dict(self.kills)}, restarts "
                f"{dict(self.restarts)}, {self.attempts} attempts of which {self.lost_attempts} lost and retried, "
                f"{self.seconds:.0f} s; lost commits: {self.lost_commits}")


async def _status(control: Control) -> p.StatusReply | None:
    """The dispatcher's status, or None while it is down (or coming back)."""
    try:
        return await asyncio.wait_for(control.status(), 10)
    except (NoDispatcher, OSError, ConnectionError, p.ProtocolError, asyncio.TimeoutError):
        await control.close()
        return None


async def run_chaos(repo, commits: int, runners: int, kill_every: tuple[float, float], chaos_seconds: float,
                    settle_seconds: float) -> ChaosReport:
    # Two streams, so that the commits (which fail, where the pauses are) do not depend on process timing.
    commit_rng, kill_rng = random.Random(SEED), random.Random(SEED + 1)
    report = ChaosReport(commits=commits)
    expected: dict[str, str] = {repo.head(): "passed"}

    def on_event(kind: str, name: str, message: str) -> None:
        if kind == "process.restarted":
            report.restarts[name.rstrip("0123456789").rstrip("-")] += 1

    supervisor = Supervisor(repo.path, repo.state, runners=runners, on_event=on_event,
                            dispatcher_args=["--heartbeat-timeout", "2", "--max-attempts", "25"])
    control = None
    started = time.monotonic()
    try:
        await supervisor.start()
        control = Control.for_state(repo.state)

        async def commit_all() -> None:
            failing = False
            for i in range(commits):
                if failing:
                    await asyncio.to_thread(repo.git, "rm", "-q", "FAIL")
                failing = commit_rng.random() < 0.1  # now and then a commit whose tests fail
                files = {f"n{i % 7}.txt": str(i)} | ({"FAIL": "x"} if failing else {})
                sha = await asyncio.to_thread(repo.commit, f"chaos {i}", files)
                expected[sha] = "failed" if failing else "passed"
                await asyncio.sleep(commit_rng.choice([0, 0, 0.1, 0.3, 0.6, 1.0]))  # bursts and pauses

        async def all_final() -> p.StatusReply | None:
            """The status once every commit made so far has a finished job."""
            status = await _status(control)
            if status is None or not set(expected) <= {j.commit for j in status.jobs if j.state in p.FINAL_STATES}:
                return None
            return status

        def every_kind_killed() -> bool:
            return all(report.kills[kind] >= 2 for kind in ("runner", "dispatcher", "observer"))

        # The observer's first start queues only the tip: let it see that tip before the commits pour in.
        wait_until = time.monotonic() + 30
        while not await all_final():
            assert time.monotonic() < wait_until, "the first commit was not tested"
            await asyncio.sleep(0.1)
        committer = asyncio.ensure_future(commit_all())
        deadline = time.monotonic() + chaos_seconds
        while time.monotonic() < deadline and not (committer.done() and every_kind_killed() and await all_final()):
            await asyncio.sleep(kill_rng.uniform(*kill_every))
            alive = [c for c in supervisor.children.values() if c.pid is not None]
            kinds = sorted({c.kind for c in alive})
            if not kinds:
                continue  # all of them are being restarted
            kind = kill_rng.choices(kinds, [{"runner": 4, "dispatcher": 1, "observer": 1}[k] for k in kinds])[0]
            victim = kill_rng.choice([c for c in alive if c.kind == kind])
            try:
                os.kill(victim.pid, signal.SIGKILL)
                report.kills[victim.kind] += 1
            except ProcessLookupError:
                pass
        await committer
        settle = time.monotonic() + settle_seconds
        while not (status := await all_final()):
            assert time.monotonic() < settle, "not every commit was tested once the chaos stopped"
            await asyncio.sleep(0.5)
        events = []
        async for event in control.subscribe(after_seq=0):
            events.append(event)
            if event.seq >= status.last_seq:
                break
    finally:
        if control is not None:
            await control.close()
        await supervisor.stop()
    report.seconds = time.monotonic() - started

    # Every commit: exactly one job, finished, with the result its tests deserve.
    jobs_of = Counter(j.commit for j in status.jobs)
    jobs = {j.commit: j for j in status.jobs}
    wrong = {sha[:10]: (jobs_of[sha], jobs[sha].state, jobs[sha].error) for sha, want in expected.items()
             if jobs_of[sha] != 1 or jobs[sha].state != want}
    report.lost_commits = len(wrong)
    assert not wrong, f"commits without exactly one job that ended as its tests say: {wrong}"
    # Exactly one final result each, published once, and a gapless event stream.
    assert [e.seq for e in events] == list(range(1, status.last_seq + 1))
    finished = Counter(e.job.id for e in events if e.kind == "job.finished")
    assert all(finished[j.id] == 1 for j in status.jobs), {j.id: finished[j.id] for j in status.jobs}
    # Every attempt recorded with its outcome and reason; only the last one counts.
    attempts: dict[int, list[p.AttemptInfo]] = {}
    for a in status.attempts:
        attempts.setdefault(a.job_id, []).append(a)
    for job in status.jobs:
        mine = sorted(attempts[job.id], key=lambda a: a.attempt)
        assert [a.attempt for a in mine] == list(range(1, job.attempts + 1))
        assert all(a.ended_at is not None for a in mine)
        assert all(a.outcome == "lost" and a.reason for a in mine[:-1]), mine
        assert mine[-1].outcome == job.state
        report.attempts += len(mine)
        report.lost_attempts += len(mine) - 1
    # Every stored log is whole: one attempt's output, down to its last line.
    for sha in expected:
        job = jobs[sha]
        log = repo.state.job_log(job.id).read_text()
        assert log.count("tuici: runner-") == 1 and log.count(f"begin {sha}") == 1, log
        assert log.rstrip("\n").endswith(f"end-of-log {sha}"), log
        assert job.log_size == len(log.encode())
    # And nothing is left running.
    assert tuici_processes() == []
    return report


@pytest.mark.timeout(240)
def test_chaos_every_commit_ends_once_and_right_while_processes_are_killed(repo):
    repo.commit("chaos config", config=toml_command(CHAOS_COMMAND, timeout=60))
    report = asyncio.run(run_chaos(repo, commits=100, runners=4, kill_every=(0.3, 2.0), chaos_seconds=90,
                                   settle_seconds=90))
    print(f"\n{report}")
    assert report.kills["runner"] and report.kills["dispatcher"] and report.kills["observer"]


@pytest.mark.skipif(not SOAK, reason="a soak of 1000 commits under chaos runs for ten minutes or so; "
                                     "set TUICI_SOAK=1 (and TUICI_CHAOS_SEED to vary it) to run it")
@pytest.mark.timeout(2400)
def test_chaos_soak(repo):
    repo.commit("chaos config", config=toml_command(CHAOS_COMMAND, timeout=60))
    # Fewer kills a minute than in CI: restarts back off to 5 s, and a soak is about time and volume.
    report = asyncio.run(run_chaos(repo, commits=1000, runners=4, kill_every=(1.5, 6.0), chaos_seconds=1500,
                                   settle_seconds=600))
    print(f"\n{report}")


# ---------------------------------------------------------------------- a hung runner


def test_a_stopped_runner_loses_its_job_and_its_late_result_is_not_recorded(repo, cluster):
    """SIGSTOP is a hung machine, not a dead one: it wakes up later holding a result for a job that moved on."""
    cluster.start_observer()
    cluster.start_runner("sleepy")
    cluster.wait_job(repo.head())
    sha = repo.commit("slow", config=toml_command("echo attempt $TUICI_ATTEMPT; sleep 2; echo done", timeout=60))
    first = cluster.wait_job(sha, states={"running"})
    wait_for(lambda: "attempt 1" in cluster.log_of(first.id), message="the first attempt's output")
    cluster.kill("sleepy", signal.SIGSTOP)
    wait_for(lambda: {r.name: r.state for r in cluster.status().runners}.get("sleepy") == "lost",
             message="the stopped runner to be marked lost")
    cluster.start_runner("awake")
    wait_for(lambda: (j := cluster.job_for(sha)) and j.runner == "awake" and j.state == "running",
             message="the second attempt to start")
    # Wake the sleeper while the second attempt runs; its own attempt's command finished meanwhile.
    wait_for(lambda: not any(proc.environ().get("TUICI_ATTEMPT") == "1" for proc in job_processes(sha)), 10,
             message="the first attempt's command to end")
    cluster.kill("sleepy", signal.SIGCONT)
    job = cluster.wait_job(sha)
    assert (job.state, job.runner, job.attempts) == ("passed", "awake", 2)
    wait_for(lambda: "no longer gives us job" in cluster.component_log("sleepy")
             or "rejected our result" in cluster.component_log("sleepy"), message="the late result to be turned away")
    status = cluster.status()
    attempts = [(a.runner, a.outcome, a.reason) for a in status.attempts if a.job_id == job.id]
    assert attempts == [("sleepy", "lost", "runner lost"), ("awake", "passed", "")]
    log = cluster.log_of(job.id)
    assert "\nattempt 1\n" not in log and log.count("\nattempt 2\n") == 1 and log.rstrip().endswith("done")

    async def finished_events(control):
        count = 0
        async for event in control.subscribe(after_seq=0):
            count += event.kind == "job.finished" and event.job.id == job.id
            if event.seq >= status.last_seq:
                return count
    assert cluster.control(finished_events) == 1
    # The sleeper is back in service.
    wait_for(lambda: {r.name: r.state for r in cluster.status().runners}.get("sleepy") == "idle",
             message="the woken runner to register again")




# ---------------------------------------------------------------------- a full disk


@pytest.fixture
def small_state_disk(repo):
    """The repository's state dir on a tmpfs of a few MiB, so that it can really fill up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the state dir needs root")
    path = repo.state.path
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory) -> None:
    """Write a filler file until the disk says no more."""
    with open(directory / "filler", "wb", buffering=0) as fh:
        block = b"\0" * 4096
        try:
            while True:
                fh.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_full_state_disk_gives_a_clear_error_keeps_the_database_whole_and_work_resumes(
        repo, small_state_disk, cluster, tmp_path, outside):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    gate = outside / "go"
    writer = repo.commit("writes while the disk is full", config=toml_command(
        f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; seq 1 200000; echo the-end", timeout=120))
    running = cluster.wait_job(writer, states={"running"})
    wait_for(lambda: "before" in cluster.log_of(running.id), message="the job's first output")

    fill(small_state_disk)
    gate.touch()
    later = repo.commit("made while the disk is full", config=toml_command("echo later; seq 1 1000"))
    # The job's log hits the full disk (SQLite may too, first or after: that is not waited for).
    wanted = f"cannot write the log of job {running.id} ([Errno 28] No space left on device)"
    wait_for(lambda: wanted in cluster.component_log("dispatcher"), 30, message="the disk-full error")
    log = cluster.component_log("dispatcher")
    # Whether SQLite needs new space too depends on its write-ahead log; if it did, the error says why.
    assert "cannot rollback" not in log and "Traceback" not in log
    if "could not write state" in log:
        assert f"could not write state to {cluster.state.db} (database or disk is full)" in log
    # Still answering, and the database is whole.
    assert cluster.status().jobs
    db = sqlite3.connect(f"file:{cluster.state.db}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    finally:
        db.close()

    (small_state_disk / "filler").unlink()  # space is back
    done = cluster.wait_job(writer, timeout=60)
    assert done.state == "passed"
    text = cluster.log_of(done.id)
    assert text.count("\n200000\n") == 1 and text.rstrip().endswith("the-end")
    assert done.log_size == len(text.encode())
    assert cluster.wait_job(later, timeout=60).state == "passed"

    # A restart reads it all back.
    cluster.kill("dispatcher")
    cluster.start_dispatcher()
    status = cluster.status()
    assert {j.commit: j.state for j in status.jobs}[writer] == "passed"
    assert cluster.wait_job(repo.commit("after the restart", config=toml_command("true"))).state == "passed"

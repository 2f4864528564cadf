"""Retention with real processes: `tuici gc` deleting the oldest job logs (never a running job's), events past
keep_days with subscribers told the state instead of a gap, the history's size in `tuici status`, and component
logs rotated by size."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from tuici import wire as p
from tuici.wire import Control

from conftest import GitRepo, _env, toml_command, tuici, wait_for

PRINTS_3000 = "yes x | head -n 1500"  # 3000 bytes


def test_gc_deletes_the_oldest_logs_first_while_a_job_runs_and_leaves_the_running_jobs_log(
        tmp_path, cluster_factory, outside):
    repo = GitRepo(tmp_path / "repo")
    repo.state.ensure()
    repo.state.local_config.write_text('keep_bytes = "5K"\n')  # three finished logs of 3 KB: two too many
    first = repo.commit("first", config=toml_command(PRINTS_3000))
    cluster = cluster_factory(repo)
    cluster.start_runner("r1")
    cluster.start_observer()
    cluster.wait_job(first)
    second = repo.commit("second")
    cluster.wait_job(second)
    third = repo.commit("third")
    cluster.wait_job(third)
    gate = outside / "go"
    waits = f"echo started; while [ ! -e {gate} ]; do sleep 0.1; done; echo released"
    running = repo.commit("running", config=toml_command(waits, timeout=120))
    job = cluster.wait_job(running, states={"running"})
    wait_for(lambda: "started" in cluster.log_of(job.id), message="the running job's first output")
    jobs = {sha: cluster.job_for(sha) for sha in (first, second, third)}
    assert all(cluster.state.job_log(j.id).exists() for j in jobs.values())

    done = tuici("gc", str(repo.path), cwd=tmp_path)
    freed = jobs[first].log_size + jobs[second].log_size
    assert done.stdout.splitlines()[0] == f"freed {freed / 1024:.1f} KiB: 2 job logs, 0 events"
    assert "history 2 job logs" in done.stdout  # the third's and the running one's
    assert not cluster.state.job_log(jobs[first].id).exists() and not cluster.state.job_log(jobs[second].id).exists()
    assert cluster.state.job_log(jobs[third].id).exists()
    kept = {j.id: j for j in cluster.jobs()}
    assert kept[jobs[first].id].log_deleted and kept[jobs[second].id].log_deleted
    assert not kept[jobs[third].id].log_deleted and not kept[job.id].log_deleted

    gate.touch()
    assert cluster.wait_job(running).state == "passed"
    assert "started\nreleased\n" in cluster.log_of(job.id)  # written on, whole
    status = tuici("status", str(repo.path), cwd=tmp_path).stdout
    assert "history    2 job logs" in status and "(kept 30 days, at most 5.0 KiB)" in status
    history = json.loads(tuici("status", "--json", str(repo.path), cwd=tmp_path).stdout)["history"]
    assert history["logs"] == 2 and history["keep_bytes"] == 5 * 1024 and history["db_bytes"] > 0
    assert history["log_bytes"] == sum(j.log_size for j in cluster.jobs() if not j.log_deleted)


def test_events_past_keep_days_are_deleted_and_a_subscriber_from_before_them_gets_the_state(
        tmp_path, cluster_factory):
    repo = GitRepo(tmp_path / "repo")
    repo.state.ensure()
    repo.state.local_config.write_text("keep_days = 0.00003\n")  # 2.6 s
    sha = repo.commit("first", config=toml_command("echo ok"))
    cluster = cluster_factory(repo)
    cluster.start_runner("r1")
    cluster.start_observer()
    job = cluster.wait_job(sha)
    time.sleep(3)  # the first job and its events are older than keep_days now
    done = tuici("gc", str(repo.path), cwd=tmp_path)
    assert "1 job logs" in done.stdout and not cluster.state.job_log(job.id).exists()
    events = int(done.stdout.split(" events")[0].rsplit(" ", 1)[1])
    assert events >= 5  # commit.seen, job.queued, job.started, job.finished, runner.joined...

    async def from_the_start() -> list:
        """Follow from event 0, as a client that last looked before the deletion; a new commit meanwhile."""
        control = Control.for_state(cluster.state)
        got: list = []
        try:
            async for message in control.subscribe(after_seq=0):
                got.append(message)
                if len(got) == 1:
                    await asyncio.to_thread(repo.commit, "after the deletion")
                if isinstance(message, p.Event) and message.kind == "commit.seen":
                    return got
        finally:
            await control.close()
        return got

    got = asyncio.run(asyncio.wait_for(from_the_start(), 30))
    snapshot = got[0]
    assert isinstance(snapshot, p.StatusReply)  # the state, not events with a gap before them
    assert snapshot.history.events_from > events and [j.id for j in snapshot.jobs] == [job.id]
    assert got[1:] and all(isinstance(m, p.Event) and m.seq > snapshot.last_seq for m in got[1:])
    assert got[-1].commit.subject == "after the deletion"


def test_component_logs_rotate_by_size_and_stderr_follows_into_the_new_file(tmp_path):
    log = tmp_path / "logs" / "runner-1.log"
    log.parent.mkdir()
    script = (
        "import logging, sys\n"
        "from tuici.cli import setup_logging\n"
        f"setup_logging({str(log)!r}, max_bytes=2000)\n"
        "for n in range(100):\n"
        "    logging.getLogger('tuici.runner').info('line %03d of the runner log', n)\n"
        "print('a stray line on stderr', file=sys.stderr)\n"
    )
    with open(log, "ab") as out:  # as a supervisor starts a component: stdout and stderr are the log
        subprocess.run([sys.executable, "-c", script], stdout=out, stderr=out, env=_env(), check=True, timeout=60)
    files = sorted(path.name for path in log.parent.iterdir())
    assert files == ["runner-1.log", "runner-1.log.1", "runner-1.log.2"]  # two old ones kept, the rest gone
    assert all(path.stat().st_size <= 2100 for path in log.parent.iterdir())
    current = log.read_text()
    assert "line 099" in current and current.endswith("a stray line on stderr\n")
    assert "line 000" not in "".join(path.read_text() for path in log.parent.iterdir())

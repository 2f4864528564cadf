"""`tuici serve` and the query commands, as a user or a script runs them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import psutil
import pytest

from tuici.wire import Control

from conftest import cmdline, events, job_processes, toml_command, tuici, tuici_processes, wait_for


@pytest.fixture
def serve(repo, serve_factory):
    return serve_factory(repo, "--runners", "2", "--heartbeat-timeout", "2")


def test_serve_runs_everything_prints_json_events_and_leaves_nothing_behind_on_sigterm(repo, serve, tmp_path):
    first = repo.head()
    wait_for(lambda: any(e.get("kind") == "job.finished" and e["job"]["commit"] == first for e in events(serve)),
             30, message="the first commit to be tested")
    sha = repo.commit("hangs", config=toml_command("sleep 300", timeout=600))
    wait_for(lambda: any(e.get("kind") == "job.started" and e["job"]["commit"] == sha for e in events(serve)),
             30, message="the hanging job to start")
    wait_for(lambda: any("sleep 300" in " ".join(cmdline(p)) for p in tuici_processes()), message="the test command")
    assert len(tuici_processes()) >= 5  # serve, dispatcher, observer, 2 runners, and the test command
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(20) == 0
    assert tuici_processes() == []
    kinds = [e.get("kind") for e in events(serve)]
    wanted = {"process.started", "runner.joined", "commit.seen", "job.queued", "job.started", "job.finished"}
    assert wanted <= set(kinds)
    seqs = [e["seq"] for e in events(serve) if "seq" in e]
    assert seqs == sorted(set(seqs))


def test_a_sigkilled_serve_takes_the_processes_it_started_with_it(repo, serve):
    """They are in sessions of their own, out of reach of a signal to serve's group: each asked the kernel
    (PR_SET_PDEATHSIG) to kill it when serve dies."""
    wait_for(lambda: sum(e.get("kind") == "runner.joined" for e in events(serve)) == 2, 30, message="both runners")
    def children() -> list[psutil.Process] | None:
        found = [p for p in tuici_processes() if p.pid != serve.pid]
        return found if len(found) >= 4 else None
    started = wait_for(children, message="dispatcher, observer and 2 runners")
    serve.kill()
    serve.wait()

    def gone(proc: psutil.Process) -> bool:
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    try:
        wait_for(lambda: all(gone(p) for p in started), 10, message="serve's children to die with it")
    finally:
        for proc in started:  # no longer marked as ours once serve is gone: the fixture would not find them
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_serve_restarts_a_dispatcher_that_dies_and_nothing_is_lost(repo, serve):
    wait_for(lambda: repo.state.address(), message="the dispatcher")
    wait_for(lambda: any(e.get("kind") == "job.finished" for e in events(serve)), 30, message="a first job")
    dispatcher = wait_for(lambda: next((p for p in tuici_processes() if "dispatcher" in cmdline(p)), None))
    address = repo.state.address()
    dispatcher.kill()
    sha = repo.commit("while the dispatcher restarts")
    wait_for(lambda: any(e.get("kind") == "process.restarted" and e.get("message", "").startswith("dispatcher:")
                         for e in events(serve)), 20, message="the dispatcher restart to be published")
    assert repo.state.address() == address

    def finished():
        return any(e.get("kind") == "job.finished" and e["job"]["commit"] == sha and e["job"]["state"] == "passed"
                   for e in events(serve))
    wait_for(finished, 30, message="the commit made during the restart to pass")


def test_serve_kills_the_test_commands_of_a_runner_that_was_sigkilled_even_those_that_escaped(repo, serve):
    wait_for(lambda: any(e.get("kind") == "job.finished" for e in events(serve)), 30, message="a first job")
    # One process stays in the job's group; one left it (setsid) through a parent that exited (double fork).
    sha = repo.commit("hangs", config=toml_command("(setsid sleep 301 &); sleep 300", timeout=600))

    def first_attempt():
        found = []
        for proc in job_processes(sha):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("TUICI_ATTEMPT") == "1":
                    found.append(proc)
        return found

    def both_started():
        found = first_attempt()
        return found if {"sleep 300", "sleep 301"} <= {" ".join(cmdline(p)) for p in found} else None

    procs = wait_for(both_started, 30, message="both test processes")
    runner = next(a for p in procs for a in p.parents() if "runner" in cmdline(a))
    runner.kill()  # its test processes are handed to serve, which kills them: no need to wait for serve's stop
    wait_for(lambda: not first_attempt(), 20, message="the orphaned test processes to be killed")
    assert serve.poll() is None


def test_status_log_rerun_and_cancel_commands(repo, serve):
    first = repo.head()
    wait_for(lambda: any(e.get("kind") == "job.finished" for e in events(serve)), 30, message="a first job")
    status = json.loads(tuici("status", "--json", cwd=repo.path).stdout)
    assert set(status) >= {"repo_url", "last_seq", "jobs", "runners", "commits", "attempts"}
    job = next(j for j in status["jobs"] if j["commit"] == first)
    assert set(job) >= {"id", "commit", "branch", "state", "runner", "attempts", "exit_code", "duration_s"}
    assert {r["state"] for r in status["runners"]} <= {"idle", "busy", "lost"}
    assert {"name", "host", "pid", "state"} <= set(status["runners"][0])

    human = tuici("status", cwd=repo.path).stdout
    assert "runner-1" in human and first[:10] in human

    out = tuici("log", str(job["id"]), str(repo.path), cwd="/").stdout
    assert "ok" in out and "testing" in out
    missing = tuici("log", "9999", cwd=repo.path, check=False)  # no file here: the dispatcher is asked
    assert missing.returncode == 2 and missing.stderr == "tuici: no job 9999\n"

    rerun = tuici("rerun", first[:8], cwd=repo.path)
    assert "queued at the front" in rerun.stdout
    bad = tuici("cancel", "9999", cwd=repo.path, check=False)
    assert bad.returncode == 1 and "no job 9999" in bad.stdout


def test_clear_errors_outside_a_repository_and_without_a_dispatcher(tmp_path, repo):
    not_repo = tuici("status", cwd=tmp_path, check=False)
    assert not_repo.returncode == 2 and "not a git repository" in not_repo.stderr and "Traceback" not in not_repo.stderr
    nothing = tuici("status", cwd=repo.path, check=False)
    assert nothing.returncode == 2 and "no dispatcher" in nothing.stderr
    for command in ("serve", "dispatcher", "observer", "runner", "status", "log", "rerun", "cancel"):
        assert tuici(command, "--help", cwd=tmp_path).stdout.startswith("usage: tuici " + command)


def test_a_subscriber_resumes_after_its_last_event_without_gaps_or_duplicates(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())

    async def read(after: int, until: int) -> list[int]:
        control = Control.for_state(cluster.state)
        seen = []
        async for event in control.subscribe(after_seq=after):
            seen.append(event.seq)
            if event.seq >= until:
                break
        return seen

    total = cluster.status().last_seq
    assert asyncio.run(read(0, total)) == list(range(1, total + 1))
    middle = total // 2
    assert asyncio.run(read(middle, total)) == list(range(middle + 1, total + 1))
    # Across a dispatcher restart, numbering goes on and old events are still served.
    cluster.kill("dispatcher", signal.SIGKILL)
    cluster.start_dispatcher()
    sha = repo.commit("after restart")
    cluster.wait_job(sha)
    new_total = cluster.status().last_seq
    assert new_total > total
    assert asyncio.run(read(middle, new_total)) == list(range(middle + 1, new_total + 1))


def test_state_lives_in_the_git_dir_and_the_token_is_private(repo, cluster):
    import stat

    assert cluster.state.path == repo.path / ".git" / "tuici"
    mode = stat.S_IMODE(cluster.state.token_file.stat().st_mode)
    assert mode == 0o600
    assert repo.git("status", "--porcelain") == ""
    # Local clients use the Unix socket there, private to its owner; components elsewhere the TCP address.
    assert cluster.state.addresses() == [f"unix:{cluster.state.socket}", cluster.address]
    assert stat.S_ISSOCK(cluster.state.socket.stat().st_mode)
    assert stat.S_IMODE(cluster.state.socket.stat().st_mode) == 0o600

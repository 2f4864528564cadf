"""What a runner does with a job: config, environment, test counts, errors, attempts."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import pytest

from bench.netns import Island, NetnsUnavailable
from tuici import wire as p
from tuici.wire import Control

from conftest import Cluster, _env, tcp_address, toml_command, wait_for


def test_job_environment_and_junit_counts(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    tests = (
        "def test_a(): pass\n"
        "def test_b(): pass\n"
        "def test_c(): assert False\n"
        "import pytest\n"
        "@pytest.mark.skip(reason='later')\n"
        "def test_d(): pass\n"
    )
    env_dump = "env | grep -E '^(CI|TUICI_[A-Z_]+|GREETING)=' | sort; python -m pytest -q --junitxml=$TUICI_JUNIT_XML"
    config = toml_command(env_dump) + "[env]\nGREETING = 'hello'\n"
    sha = repo.commit("with tests", files={"test_sample.py": tests}, config=config)
    job = cluster.wait_job(sha)
    assert job.state == "failed"
    assert (job.passed, job.failed, job.skipped) == (2, 1, 1)
    log = cluster.log_of(job.id)
    for line in ("CI=true", f"TUICI_COMMIT={sha}", "TUICI_BRANCH=main", f"TUICI_JOB_ID={job.id}",
                 "TUICI_ATTEMPT=1", "GREETING=hello"):
        assert line in log
    assert "TUICI_TOKEN" not in log and cluster.state.token() not in log


def test_default_command_is_pytest_and_pyproject_config_is_read(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    repo.git("rm", "-q", "tuici.toml")
    sha = repo.commit("default", files={"test_one.py": "def test_one(): pass\n"})
    job = cluster.wait_job(sha)
    assert (job.state, job.passed, job.failed) == ("passed", 1, 0)
    assert "python -m pytest" in cluster.log_of(job.id)

    sha = repo.commit("pyproject", files={"pyproject.toml": "[tool.tuici]\ncommand = ['echo', 'from pyproject']\n"})
    job = cluster.wait_job(sha)
    assert job.state == "passed" and "from pyproject" in cluster.log_of(job.id)


def test_a_broken_config_fails_that_job_naming_file_and_key(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    sha = repo.commit("bad timeout", config="command = 'true'\ntimeout = 'soon'\n")
    job = cluster.wait_job(sha)
    assert job.state == "error"
    assert "tuici.toml" in job.error and "timeout" in job.error
    sha = repo.commit("bad toml", config="command = [\n")
    job = cluster.wait_job(sha)
    assert job.state == "error" and "tuici.toml: invalid TOML" in job.error
    # The runner is fine and takes the next job.
    assert cluster.wait_job(repo.commit("fixed", config=toml_command("true"))).state == "passed"


def test_a_missing_commit_is_a_job_error_not_a_crash(repo, cluster, tmp_path):
    from conftest import GitRepo

    other = GitRepo(tmp_path / "other")
    other.commit("elsewhere")
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    # Report a commit that exists only in another repository, as a confused observer might.
    from tuici import wire as p

    async def report(control):
        conn, _ = await p.handshake(control.endpoint, p.Hello(role="observer", token=control.endpoint.token))
        try:
            await conn.request(p.CommitsSeen(branch="ghost", tip=other.head(), commits=[
                p.CommitInfo(sha=other.head(), branch="ghost", author="x", subject="ghost")]))
        finally:
            await conn.close()
    cluster.control(report)
    job = cluster.wait_job(other.head())
    assert job.state == "error" and "not in the repository" in job.error
    assert cluster.wait_job(repo.commit("still working")).state == "passed"


def test_a_job_whose_runners_keep_dying_ends_in_error(repo, tmp_path):
    cluster = Cluster(repo, tmp_path, heartbeat_timeout=1.0, max_attempts=2)
    try:
        cluster.start_dispatcher()
        cluster.start_observer()
        sha = repo.commit("deadly", config=toml_command("sleep 60"))
        for attempt in (1, 2):
            name = f"victim{attempt}"
            cluster.start_runner(name)
            wait_for(lambda name=name: (j := cluster.job_for(sha)) and j.state == "running" and j.runner == name,
                     message=f"attempt {attempt} running")
            cluster.kill(name, signal.SIGKILL)
        job = cluster.wait_job(sha)
        assert job.state == "error" and "gave up after 2 attempts" in job.error
        outcomes = [(a.attempt, a.outcome) for a in cluster.status().attempts if a.job_id == job.id]
        assert outcomes == [(1, "lost"), (2, "lost")]
    finally:
        cluster.stop()


def test_a_stopped_runner_is_lost_after_the_heartbeat_timeout_and_its_late_result_rejected(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("sleepy")
    cluster.wait_job(repo.head())
    sha = repo.commit("slow", config=toml_command("sleep 2; echo done"))
    cluster.wait_job(sha, states={"running"})
    cluster.kill("sleepy", signal.SIGSTOP)
    wait_for(lambda: {r.name: r.state for r in cluster.status().runners}.get("sleepy") == "lost",
             message="the stopped runner to be marked lost")
    assert cluster.job_for(sha).state == "queued"
    cluster.start_runner("awake")
    job = cluster.wait_job(sha)
    assert (job.state, job.runner, job.attempts) == ("passed", "awake", 2)
    cluster.kill("sleepy", signal.SIGCONT)
    wait_for(lambda: "no longer its own" in cluster.component_log("dispatcher")
             or "no longer gives us job" in cluster.component_log("sleepy"),
             message="the late runner to be turned away")
    job = cluster.job_for(sha)
    assert (job.state, job.runner, job.attempts) == ("passed", "awake", 2)
    assert len([a for a in cluster.status().attempts if a.job_id == job.id]) == 2


def test_a_killed_runner_loses_its_job_at_once_through_its_closed_connection(repo, cluster_factory):
    """SIGKILL in the middle of a job: the dispatcher hears of it from the connection, not from the lease (an
    hour here), and queues the job again."""
    cluster = cluster_factory(repo, heartbeat_timeout=3600.0)
    cluster.start_observer()
    cluster.start_runner("victim")
    cluster.wait_job(repo.head())
    sha = repo.commit("long", config=toml_command("sleep 60"))
    cluster.wait_job(sha, states={"running"})
    cluster.kill("victim", signal.SIGKILL)
    job = cluster.wait_job(sha, states={"queued"})
    [attempt] = [a for a in cluster.status().attempts if a.job_id == job.id]
    assert attempt.outcome == "lost"
    assert {r.name: r.state for r in cluster.status().runners}["victim"] == "lost"
    assert "runner victim lost: connection closed" in cluster.component_log("dispatcher")


def test_a_runner_stopped_while_idle_is_found_out_by_the_lease_of_the_job_it_is_given(repo, cluster):
    """An idle runner sends nothing, so one that hangs idle is noticed once it holds a job: the job's lease (the
    heartbeat timeout) runs out, and the job goes to another runner."""
    cluster.start_observer()
    cluster.start_runner("sleepy")
    cluster.wait_job(repo.head())
    wait_for(lambda: {r.name: r.state for r in cluster.status().runners}.get("sleepy") == "idle",
             message="the runner idle")
    cluster.kill("sleepy", signal.SIGSTOP)
    sha = repo.commit("for the sleeper")
    wait_for(lambda: {r.name: r.state for r in cluster.status().runners}.get("sleepy") == "lost",
             message="the stopped runner to be marked lost")
    cluster.start_runner("awake")
    job = cluster.wait_job(sha)
    assert (job.state, job.runner, job.attempts) == ("passed", "awake", 2)
    first = next(a for a in cluster.status().attempts if a.job_id == job.id and a.attempt == 1)
    assert (first.runner, first.outcome) == ("sleepy", "lost")
    assert "runner sleepy lost: no heartbeat for" in cluster.component_log("dispatcher")


def test_a_runner_whose_machine_vanishes_while_idle_is_dropped_by_keepalive(repo, tmp_path):
    """The runner on a network namespace whose link is cut: nothing is closed, and an idle runner sends nothing,
    but the kernel's keepalive probes on the dispatcher's end of the connection go unanswered, and the runner is
    lost within seconds (the lease, an hour here, plays no part)."""
    try:
        island = Island()
    except NetnsUnavailable as exc:
        pytest.skip(f"no network namespace here: {exc}")
    cluster = Cluster(repo, tmp_path, heartbeat_timeout=3600.0)
    try:
        cluster._spawn("dispatcher", "dispatcher", "--listen", f"{island.host_ip}:0", "--insecure", "--state",
                       str(cluster.state.path), "--repo", str(repo.path), "--heartbeat-timeout", "3600")
        address = wait_for(lambda: tcp_address(cluster.state), 15, message="the dispatcher's address")
        with open(tmp_path / "far.log", "ab") as log:
            island.popen([sys.executable, "-m", "tuici", "runner", "--dispatcher", address, "--state",
                          str(cluster.state.path), "--name", "far", "--workdir", str(tmp_path / "work" / "far")],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=_env(), start_new_session=True)
        wait_for(lambda: {r.name: r.state for r in cluster.status().runners}.get("far") == "idle", 30,
                 message="the far runner registered")
        island.cut()
        wait_for(lambda: {r.name: r.state for r in cluster.status().runners}.get("far") == "lost", 60,
                 message="the vanished runner to be marked lost")
        assert "runner far lost: connection closed" in cluster.component_log("dispatcher")
    finally:
        island.close()
        cluster.stop()


LIST_AND_LITTER = ("find . -path ./.git -prune -o -print | sort; "
                   "mkdir -p build gen/__pycache__ pkg/__pycache__ old/__pycache__; "
                   "touch build/out gen/__pycache__/g.pyc pkg/__pycache__/a.pyc old/__pycache__/i.pyc; "
                   "touch x.log untracked.txt")


def test_each_job_gets_a_checkout_of_exactly_its_commit_and_nothing_else(repo, cluster):
    """Nothing an earlier job wrote is there, caches included: a ``__pycache__`` the test could write is never
    trusted by the next job (a forged .pyc stamped with its source's mtime and size would be imported)."""
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    files = {".gitignore": "*.log\nbuild/\n", "pkg/__init__.py": "", "pkg/a.py": "A = 1\n", "old/__init__.py": ""}
    first = repo.commit("litter", files=files, config=toml_command(LIST_AND_LITTER))
    assert cluster.wait_job(first).state == "passed"
    repo.git("rm", "-q", "-r", "old")
    second = repo.commit("no more old")
    job = cluster.wait_job(second)
    listed = set(cluster.log_of(job.id).splitlines())
    assert {"./pkg/a.py", "./.gitignore"} <= listed
    for gone in ("./old", "./build", "./gen", "./x.log", "./untracked.txt", "./pkg/__pycache__"):
        assert gone not in listed


def test_output_printed_a_little_at_a_time_is_streamed_in_batches_and_complete(repo, cluster):
    """pytest -q prints a dot per test: each used to be a message to the dispatcher and every viewer."""
    dots = "for i in $(seq 1 200); do printf .; sleep 0.005; done; echo; echo done"
    cluster.start_observer()
    cluster.start_runner("r1")
    sha = repo.commit("dots", config=toml_command(dots))

    async def live_output() -> list[bytes]:
        control = Control.for_state(cluster.state)
        chunks, job_id = [], None
        try:
            async for message in control.subscribe(after_seq=0, output=True):
                if isinstance(message, p.Event) and message.job is not None and message.job.commit == sha:
                    job_id = message.job.id
                    if message.kind == "job.finished":
                        return chunks
                elif isinstance(message, p.JobOutput) and message.job_id == job_id:
                    chunks.append(message.data)
        finally:
            await control.close()
        return chunks

    chunks = asyncio.run(live_output())
    job = cluster.wait_job(sha)
    assert job.state == "passed"
    log = cluster.log_of(job.id)
    assert log.endswith("\n" + "." * 200 + "\ndone\n")
    assert b"".join(chunks).decode() == log  # the live stream is the stored log
    assert 1 < len(chunks) < 100  # live, yet batched: 200 prints in well under 100 messages

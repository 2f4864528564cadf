"""`tuici log -f` through the dispatcher's socket: across a lost attempt, and from another machine (a second
network namespace) over TLS, with the token and no repository there."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tuici.joboutput import LOST_ATTEMPT
from tuici.statedir import StateDir

from conftest import _env, tcp_address, toml_command, wait_for
from test_security import NETNS_DISPATCHER, certs, hosts  # noqa: F401 (fixtures)


def test_log_follow_says_when_an_attempt_was_lost_and_follows_the_next(repo, cluster, outside):
    gate = outside / "gate"
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    sha = repo.commit("slow", config=toml_command(
        f"echo attempt $TUICI_ATTEMPT; while [ ! -e {gate} ]; do sleep 0.1; done; echo finished"))
    job = cluster.wait_job(sha, states={"running"})
    follow = subprocess.Popen([sys.executable, "-m", "tuici", "log", str(job.id), "-f"], cwd=repo.path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                              start_new_session=True)
    try:
        assert follow.stdout is not None
        lines = []
        for line in follow.stdout:
            lines.append(line)
            if line == "attempt 1\n":
                break
        cluster.start_runner("r2")
        cluster.kill("r1", signal.SIGKILL)
        wait_for(lambda: "attempt 2" in cluster.log_of(job.id), 30, message="the second attempt's output")
        gate.touch()
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, err
    whole = "".join(lines) + out
    first, _, second = whole.partition(LOST_ATTEMPT)
    assert "attempt 1\n" in first and second == cluster.log_of(job.id)
    assert "attempt 2\n" in second and second.endswith("finished\n")


@pytest.mark.timeout(180)
def test_log_follow_from_another_network_namespace_over_tls(repo, tmp_path, certs, hosts, outside):  # noqa: F811
    gate = outside / "gate"
    state = StateDir(repo.path / ".git" / "tuici")
    ca = certs / "ca.pem"
    hosts.spawn(hosts.dispatcher_ns, tmp_path / "dispatcher.log", "dispatcher", "--listen", f"{NETNS_DISPATCHER}:0",
                "--state", str(state.path), "--repo", str(repo.path), "--tls-cert", str(certs / "server.pem"),
                "--tls-key", str(certs / "server.key"))
    address = wait_for(lambda: tcp_address(state), 15, message="the dispatcher's address")
    common = ["--dispatcher", address, "--state", str(state.path), "--tls-ca", str(ca)]
    hosts.spawn(hosts.dispatcher_ns, tmp_path / "observer.log", "observer", str(repo.path), *common)
    hosts.spawn(hosts.dispatcher_ns, tmp_path / "runner.log", "runner", *common, "--name", "r1",
                "--workdir", str(tmp_path / "r1"))
    sha = repo.commit("prints, waits, prints", config=toml_command(
        f"echo first line; while [ ! -e {gate} ]; do sleep 0.1; done; echo second line"))
    token = state.token()
    job_id = wait_for(lambda: next((j["id"] for j in hosts.status(hosts.runner_ns, address, token, ca)["jobs"]
                                    if j["commit"] == sha), None), 60, interval=0.2, message="the commit's job")

    # The other host: no repository, no state dir; the token, the address and the CA in the environment.
    remote = {**_env(), "TUICI_DISPATCHER": address, "TUICI_TOKEN": token, "TUICI_TLS_CA": str(ca)}
    follow = subprocess.Popen(["ip", "netns", "exec", hosts.runner_ns, sys.executable, "-m", "tuici", "log",
                               str(job_id), "-f"], cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=remote, start_new_session=True)
    try:
        assert follow.stdout is not None
        lines = []
        for line in follow.stdout:  # streamed while the job runs: the gate is still closed
            lines.append(line)
            if line == "first line\n":
                break
        assert follow.poll() is None
        gate.touch()
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, err
    whole = "".join(lines) + out
    assert whole.endswith("second line\n") and whole == state.job_log(job_id).read_text()

    # The wrong CA, and the wrong token, are refused, with a message rather than a traceback.
    for env, problem in (({"TUICI_TLS_CA": str(certs / "stranger.pem")}, "CERTIFICATE_VERIFY_FAILED"),
                         ({"TUICI_TOKEN": "not-the-token"}, "wrong token")):
        refused = subprocess.run(["ip", "netns", "exec", hosts.runner_ns, sys.executable, "-m", "tuici", "log",
                                  str(job_id), "-f"], cwd="/", capture_output=True, text=True,
                                  env={**remote, **env}, timeout=60)
        assert refused.returncode != 0 and problem in refused.stderr and "Traceback" not in refused.stderr


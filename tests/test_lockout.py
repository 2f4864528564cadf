"""Code under test cannot lock anyone out of the dispatcher: not through its TCP port, nor through its socket.

A test opening and closing connections to the dispatcher's port in a loop used to get 19 of 20 `tuici status`
calls refused (everything local shares 127.0.0.1), and made `tuici cancel` of its own job fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tuici.runner.sandbox import find_bwrap, probe

from conftest import _env, _wait_or_kill, events, tcp_address, tuici, wait_for

# What the job runs: it tries the dispatcher's Unix socket, then connects to its TCP port and closes, over and over.
JOB_FLOOD = """\
import socket, sys

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    socket.socket(socket.AF_UNIX).connect(path)
    print("unix socket: reached", flush=True)
except OSError as exc:
    print(f"unix socket: {type(exc).__name__}", flush=True)
made = 0
while True:
    try:
        socket.create_connection((host, port), timeout=5).close()
        made += 1
    except OSError:
        pass
    if made % 500 == 0:
        print(f"connections: {made}", flush=True)
"""

# Another local process: half its connections close at once, half stay without a word (400 at a time).
LOCAL_FLOOD = """\
import socket, sys

host, port, progress = sys.argv[1], int(sys.argv[2]), sys.argv[3]
held, made = [], 0
while True:
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError:
        continue
    made += 1
    if made % 2:
        sock.close()
    else:
        held.append(sock)
        if len(held) > 400:
            held.pop(0).close()
    if made % 500 == 0:
        with open(progress, "w") as fh:
            fh.write(str(made))
"""

CALLS = 20
PROMPT = 5.0  # seconds: a status or a cancel answers within this, every time


def _timed(repo, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = tuici(*args, cwd=repo.path, check=False)
    return done, time.monotonic() - started


def _made(progress) -> int:
    try:
        return int(progress.read_text() or 0)
    except FileNotFoundError:
        return 0


@pytest.mark.timeout(300)
def test_floods_of_connections_from_a_job_and_from_another_process_delay_no_status_or_cancel(
        repo, serve_factory, tmp_path):
    serve = serve_factory(repo, "--runners", "1", "--listen", "127.0.0.1:0")
    wait_for(lambda: any(e.get("kind") == "job.finished" for e in events(serve)), 60, message="a first job")
    state = repo.state
    tcp = tcp_address(state)
    assert state.address() == f"unix:{state.socket}" and tcp is not None
    host, _, port = tcp.rpartition(":")

    sha = repo.commit("floods the dispatcher", files={"flood.py": JOB_FLOOD}, config=(
        f"command = {json.dumps(['python3', 'flood.py', host, port, str(state.socket)])}\ntimeout = 600\n"))
    job_id = wait_for(lambda: next((e["job"]["id"] for e in events(serve)
                                    if e.get("kind") == "job.started" and e["job"]["commit"] == sha), None),
                      60, message="the flooding job to start")
    log = state.job_log(job_id)
    wait_for(lambda: log.exists() and "connections: 1000" in log.read_text(), 60, message="the job's flood")
    progress = tmp_path / "flooder.progress"
    flooder = subprocess.Popen([sys.executable, "-c", LOCAL_FLOOD, host, port, str(progress)], env=_env(),
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _made(progress) >= 1000, 60, message="the other process's flood")
        before = _made(progress)

        for _ in range(CALLS):
            status, took = _timed(repo, "status")
            assert status.returncode == 0 and "flood" in status.stdout, status.stderr
            assert took < PROMPT, f"status took {took:.1f} s"
            # A peer with the token that comes over TCP, as the floods do, is let in as well.
            remote = tuici("status", cwd=repo.path, check=False, TUICI_DISPATCHER=tcp)
            assert remote.returncode == 0 and "flood" in remote.stdout, remote.stderr
        for call in range(CALLS):
            cancel, took = _timed(repo, "cancel", str(job_id))
            assert took < PROMPT, f"cancel took {took:.1f} s"
            assert cancel.stdout.startswith(f"job {job_id} "), cancel.stderr
            assert ("being cancelled" if call == 0 else "cancel") in cancel.stdout
        assert _made(progress) > before  # the flood went on all along
    finally:
        flooder.terminate()
        _wait_or_kill(flooder)

    wait_for(lambda: any(e.get("kind") == "job.finished" and e["job"]["id"] == job_id for e in events(serve)),
             30, message="the flooding job to end")
    finished = next(e["job"] for e in events(serve) if e.get("kind") == "job.finished" and e["job"]["id"] == job_id)
    assert finished["state"] == "cancelled"
    output = log.read_text()
    assert "unix socket: reached" not in output or probe(find_bwrap()) is not None, output[:300]
    # Thousands of failed handshakes, and a log that did not grow by a line for each.
    lines = state.component_log("dispatcher").read_text().count("closing connection from 127.0.0.1")
    assert lines < 200

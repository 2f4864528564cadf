"""Scripts and hooks that wait: `tuici wait`, the README's pre-push hook and `status --exit-status`, with a real
`tuici serve` and real repositories."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GitRepo, _env, events, toml_command, tuici, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def serve(repo, serve_factory):
    proc = serve_factory(repo, "--runners", "1")
    wait_for(lambda: any(e.get("kind") == "job.finished" for e in events(proc)), 60, message="the first job")
    return proc


def job_of(serve, sha: str, kind: str = "job.queued") -> dict:
    return wait_for(lambda: next((e["job"] for e in events(serve) if e.get("kind") == kind
                                  and e["job"]["commit"] == sha), None), 30, message=f"{kind} for {sha[:10]}")


def waiting(repo, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuici", "wait", *args], cwd=repo.path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def test_wait_exits_0_for_passed_1_for_failed_and_2_for_error(repo, serve):
    passed = tuici("wait", cwd=repo.path, check=False)  # HEAD, tested already
    assert passed.returncode == 0 and "passed" in passed.stdout, passed.stderr
    repo.commit("fails", config=toml_command("echo nope; exit 3"))
    failed = tuici("wait", cwd=repo.path, check=False)  # HEAD, perhaps not even seen yet: waited for
    assert failed.returncode == 1 and "failed" in failed.stdout, failed.stderr
    broken = repo.commit("broken config", config="command = ''\n")
    error = tuici("wait", broken[:10], str(repo.path), cwd="/", check=False)
    assert error.returncode == 2 and "error" in error.stdout and "must not be empty" in error.stdout
    by_number = tuici("wait", str(job_of(serve, broken)["id"]), cwd=repo.path, check=False)
    assert by_number.returncode == 2
    unknown = tuici("wait", "no-such-ref", cwd=repo.path, check=False)
    assert unknown.returncode == 2 and "neither a job number nor a commit" in unknown.stderr


def test_wait_follows_a_running_job_to_its_end_and_a_cancel_or_timeout_exits_2(repo, serve, outside):
    gate = outside / "gate"
    slow = repo.commit("waits for the gate", config=toml_command(f"while [ ! -e {gate} ]; do sleep 0.1; done"))
    job = job_of(serve, slow, "job.started")
    timed_out = tuici("wait", "--timeout", "1", cwd=repo.path, check=False)
    assert timed_out.returncode == 2 and "timed out after 1 s" in timed_out.stderr
    follower = waiting(repo, slow)
    wait_for(lambda: "waiting for job" in (follower.stderr.readline() if follower.stderr else ""), 30,
             message="wait to say what it waits for")
    assert follower.poll() is None
    tuici("cancel", str(job["id"]), cwd=repo.path)
    code, out, _ = finish(follower)
    assert code == 2 and "cancelled" in out

    rerun = tuici("rerun", slow, cwd=repo.path)
    assert "queued at the front" in rerun.stdout
    follower = waiting(repo, slow)  # the commit's newest job: the rerun's
    gate.touch()
    code, out, _ = finish(follower)
    assert code == 0 and "passed" in out


def test_wait_without_a_dispatcher_exits_2_at_once(repo):
    nothing = tuici("wait", cwd=repo.path, check=False)
    assert nothing.returncode == 2 and "no dispatcher" in nothing.stderr
    repo.state.ensure()
    repo.state.write_addresses([f"unix:{repo.state.socket}"])  # as a dispatcher that has stopped leaves it
    repo.state.token(create=True)
    gone = tuici("wait", "--timeout", "600", cwd=repo.path, check=False)  # not the time a restart gets
    assert gone.returncode == 2 and "no dispatcher answers" in gone.stderr


def readme_pre_push_hook() -> str:
    readme = (ROOT / "README.md").read_text()
    return next(block for block in re.findall(r"```sh\n(.*?)```", readme, re.S)
                if block.startswith("#!/bin/sh") and "tuici wait" in block)


def test_the_readme_pre_push_hook_pushes_what_passed_and_refuses_what_failed(repo, serve, tmp_path):
    remote = GitRepo(tmp_path / "remote.git")
    remote.git("config", "receive.denyCurrentBranch", "ignore")
    hook = repo.path / ".git" / "hooks" / "pre-push"
    hook.write_text(readme_pre_push_hook())
    hook.chmod(0o755)
    repo.git("remote", "add", "origin", str(remote.path))
    env = {**_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # `tuici` on it

    def push() -> subprocess.CompletedProcess:
        return subprocess.run(["git", "push", "-q", "origin", "main"], cwd=repo.path, capture_output=True, text=True,
                              env=env, timeout=120)

    good = repo.commit("good", config=toml_command("echo fine"))
    pushed = push()
    assert pushed.returncode == 0, pushed.stderr
    assert remote.head("main") == good
    repo.commit("bad", config=toml_command("exit 1"))
    refused = push()
    assert refused.returncode != 0 and "not pushing refs/heads/main" in refused.stderr
    assert remote.head("main") == good


def test_status_exit_status_is_1_while_a_branch_tip_failed(repo, serve):
    assert tuici("status", "--exit-status", cwd=repo.path, check=False).returncode == 0
    repo.git("checkout", "-q", "-b", "topic")
    bad = repo.commit("bad", config=toml_command("exit 1"))
    job_of(serve, bad, "job.finished")
    human = tuici("status", "--exit-status", cwd=repo.path, check=False)
    assert human.returncode == 1 and "failing: topic" in human.stderr
    assert re.search(rf"topic\s+{bad[:10]} failed", human.stdout)
    as_json = tuici("status", "--json", "--exit-status", cwd=repo.path, check=False)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["tips"]["topic"] == bad
    fixed = repo.commit("fixed", config=toml_command("true"))
    job_of(serve, fixed, "job.finished")
    assert tuici("status", "--exit-status", cwd=repo.path, check=False).returncode == 0

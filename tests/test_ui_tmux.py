"""As a person would use it: `tuici` in a real terminal (tmux), a commit made from outside, read off the screen."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import uuid

import psutil
import pytest

from conftest import GitRepo, toml_command, wait_for

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def processes_on(repo: GitRepo) -> list[psutil.Process]:
    """tuici processes working on this repository (the app runs outside this test's process tree)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
        except psutil.Error:
            continue
        if any(str(repo.path) in arg for arg in cmdline) and any("tuici" in arg for arg in cmdline):
            found.append(proc)
    return found


@contextlib.contextmanager
def control_center(repo: GitRepo, tmp_path, python_args: tuple[str, ...] = ("-m", "tuici"), **env: str):
    """`tuici` on ``repo`` (started by ``python_args``) in a tmux session of 160x48; its name. Everything it
    started is gone at the end."""
    session = f"tuici-e2e-{uuid.uuid4().hex[:8]}"
    # tmux may hand the pane COLUMNS/LINES of its default size, which Textual would believe over the tty.
    settings = {"XDG_CONFIG_HOME": str(tmp_path / "config"), **env}
    env_args = " ".join(f"{name}={shlex.quote(value)}" for name, value in settings.items())
    command = (f"cd {shlex.quote(str(repo.path))} && env -u COLUMNS -u LINES {env_args} "
               f"{shlex.quote(sys.executable)} {shlex.join(python_args)} --runners 1")
    tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "48", command)
    try:
        yield session
        tmux("send-keys", "-t", session, "q")
        wait_for(lambda: not processes_on(repo), 20, interval=0.2,
                 message=f"q to stop every process; the screen was:\n{screen(session)}")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        for proc in processes_on(repo):  # only if the test failed before q did its work
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()


def test_a_commit_made_from_outside_shows_up_passing(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.commit("initial", config=toml_command("echo testing; exit 0"))
    with control_center(repo, tmp_path) as session:
        wait_for(lambda: "✔ passed" in screen(session), 30, interval=0.2, message="the first commit to pass")
        repo.commit("Made from outside the app")
        line = wait_for(
            lambda: next((row for row in screen(session).splitlines()
                          if "Made from outside" in row and "passed" in row), None),
            30, interval=0.2, message=f"the new commit to show as passed on:\n{screen(session)}",
        )
        assert "✔ passed" in line and repo.head()[:7] in line


def test_a_broken_branch_rings_the_bell_and_o_pages_the_jobs_output(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.commit("initial", config=toml_command("echo testing; exit 0"))
    paged = tmp_path / "paged.txt"
    with control_center(repo, tmp_path, PAGER=f"sh -c 'cat > {paged}'") as session:
        wait_for(lambda: "✔ passed" in screen(session), 30, interval=0.2, message="the first commit to pass")
        assert tmux("display", "-p", "-t", session, "#{window_bell_flag}").strip() == "0"
        repo.commit("Break it", config=toml_command("echo 'test_thing FAILED'; exit 1"))
        wait_for(lambda: "main is broken" in screen(session), 30, interval=0.2,
                 message="the toast that main is broken")
        assert tmux("display", "-p", "-t", session, "#{window_bell_flag}").strip() == "1"
        tmux("send-keys", "-t", session, "o")  # the newest commit is selected: the failed one
        wait_for(lambda: paged.exists() and "test_thing FAILED" in paged.read_text(), 20, interval=0.2,
                 message="the pager to get the job's output")
        wait_for(lambda: "Break it" in screen(session), 20, interval=0.2, message="the app back after the pager")

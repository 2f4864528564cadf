"""Helpers the bench and the test suite (``tests/conftest.py``) both use: a plain module, no pytest in it.

Only what is truly the same on both sides lives here: polling for a condition, running git, making a
repository, waiting for a process (killing its group if it will not exit) and sampling
peak memory. Each side picks the exception a failure raises: a test fails with ``AssertionError``, a bench
row with ``BenchError``.

What differs on purpose stays apart, see ``bench.harness``: the bench's ``Cluster`` and ``Repo``, and the
environment its processes get. So does a job's TOML: the bench writes the command as a JSON-quoted basic
string (``bench.rows.common.toml``), the tests as a Python ``repr`` (``toml_command``), and the tests' text
is part of what they were tuned on (with the other quoting, test_engine's dispatcher-outage test retries
its job when run after the rest of that file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Hashable

import psutil


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
             message: str = "condition", error: type[Exception] = AssertionError):
    """Poll ``predicate`` until it returns something truthy (and return that), at most ``timeout`` seconds;
    then raise ``error`` naming ``message``."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g} s waiting for {message} (last: {repr(last)[:200]})")
        time.sleep(interval)


class GitFailed(Exception):
    """A git command exited non-zero (its stderr in the message)."""


def git(cwd: Path, *args: str, input: bytes | None = None, error: type[Exception] = GitFailed) -> str:
    """Run ``git args`` in ``cwd``; its stdout, stripped. A failure raises ``error`` with git's stderr."""
    res = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, check=False)
    if res.returncode != 0:
        raise error(f"git {' '.join(args[:3])} failed: {res.stderr.decode(errors='replace').strip()}")
    return res.stdout.decode().strip()


def init_repo(path: Path, name: str, email: str, error: type[Exception] = GitFailed) -> None:
    """``git init`` on ``main`` in the existing directory ``path``, with a committer and no signing."""
    git(path, "init", "-q", "-b", "main", error=error)
    for key, value in (("user.email", email), ("user.name", name), ("commit.gpgsign", "false")):
        git(path, "config", key, value, error=error)


def killpg(pgid: int, sig: int) -> None:
    """Signal a process group, if it is still there."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_or_kill(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Wait ``timeout`` seconds for ``proc`` (which leads its own session) to exit; then SIGKILL its process
    group and reap it."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


class PeakRss:
    """The highest resident memory of some processes (``{key: pid}``), sampled on a thread for as long as
    the ``with`` block runs: ``peak[key]`` in bytes, from their memory when the sampler was made."""

    def __init__(self, pids: dict[Hashable, int], interval: float):
        self.procs = {key: psutil.Process(pid) for key, pid in pids.items()}
        self.peak = {key: _rss(proc) for key, proc in self.procs.items()}
        self.interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            for key, proc in self.procs.items():
                self.peak[key] = max(self.peak[key], _rss(proc))

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(5)


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0

"""`tuici demo`: the control center on a sample repository that keeps getting new commits.

The repository lives in a temporary directory and is removed on quit. Its test command
is a small shell script each commit rewrites: some commits pass, some fail, some are slow
and print as they go; each writes a JUnit summary so the test counts show too.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..statedir import StateDir
from .backend import LiveBackend
from .launch import open_control_center

COMMIT_EVERY = 5.0  # seconds between the demo's commits

SCRIPT = """#!/bin/sh
# The demo's test suite: a line per test, then the JUnit XML that tuici reads (each test case).
tests={tests}; failures={failures}; delay={delay}
i=1
while [ $i -le $tests ]; do
  if [ $i -le $failures ]; then
    printf 'tests/test_demo.py::test_%03d \\033[31mFAILED\\033[0m\\n' $i
  else
    printf 'tests/test_demo.py::test_%03d \\033[32mPASSED\\033[0m\\n' $i
  fi
  sleep $delay
  i=$((i + 1))
done
{{
  printf '<testsuite tests="%d" failures="%d" skipped="0">\\n' $tests $failures
  i=1
  while [ $i -le $tests ]; do
    if [ $i -le $failures ]; then
      printf '<testcase classname="tests.test_demo" name="test_%03d" time="0.02">' $i
      printf '<failure message="AssertionError: assert %d == 0">assert %d == 0</failure></testcase>\\n' $i $i
    else
      printf '<testcase classname="tests.test_demo" name="test_%03d" time="0.02"/>\\n' $i
    fi
    i=$((i + 1))
  done
  printf '</testsuite>\\n'
}} > "$TUICI_JUNIT_XML"
echo "$((tests - failures)) passed, $failures failed"
[ $failures -eq 0 ]
"""


@dataclass(frozen=True)
class SampleCommit:
    subject: str
    author: str
    branch: str
    tests: int
    failures: int = 0
    delay: float = 0.02  # seconds per test: a slow commit prints live for a while


SAMPLES = (
    SampleCommit("Add the queue model", "Alice Liddell", "main", 24),
    SampleCommit("Break the login form on purpose", "Bob Stone", "feature/login", 18, failures=2),
    SampleCommit("Run the slow integration suite", "Carol Reyes", "main", 60, delay=0.25),
    SampleCommit("Fix the login form", "Bob Stone", "feature/login", 18),
    SampleCommit("Tidy the README", "Dave Okafor", "main", 24),
    SampleCommit("Make the flaky test fail again", "Erin Park", "feature/flaky", 30, failures=1),
    SampleCommit("Stream a long log", "Carol Reyes", "main", 120, delay=0.1),
)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def make_repository(repo: Path) -> None:
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "demo@tuici.invalid")
    git(repo, "config", "user.name", "tuici demo")
    git(repo, "config", "commit.gpgsign", "false")
    (repo / "tuici.toml").write_text('command = "sh ci.sh"\ntimeout = 120\n')


def add_commit(repo: Path, sample: SampleCommit, number: int) -> None:
    """Commit ``sample`` on its branch (made from main when new), then go back to main."""
    if sample.branch != "main":
        new = not _branch_exists(repo, sample.branch)
        git(repo, "checkout", "-q", *(["-b"] if new else []), sample.branch)
    (repo / "ci.sh").write_text(SCRIPT.format(tests=sample.tests, failures=sample.failures, delay=sample.delay))
    with open(repo / "CHANGES", "a") as changes:
        changes.write(f"{number}: {sample.subject}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", sample.subject, "--author",
        f"{sample.author} <{sample.author.split()[0].lower()}@example.com>")
    if sample.branch != "main":
        git(repo, "checkout", "-q", "main")


def _branch_exists(repo: Path, branch: str) -> bool:
    return subprocess.run(["git", "rev-parse", "--verify", "-q", f"refs/heads/{branch}"], cwd=repo,
                          capture_output=True).returncode == 0


class Committer(threading.Thread):
    """Keeps committing samples, in a thread of its own so git never runs on the UI's."""

    def __init__(self, repo: Path, first: int):
        super().__init__(name="tuici-demo-committer", daemon=True)
        self.repo = repo
        self.first = first
        self.stopping = threading.Event()

    def run(self) -> None:
        samples = itertools.cycle(SAMPLES[3:] + SAMPLES[:3])  # the first three are committed already
        for number in itertools.count(self.first):
            if self.stopping.wait(COMMIT_EVERY):
                return
            try:
                add_commit(self.repo, next(samples), number)
            except (OSError, subprocess.CalledProcessError):
                return  # the repository went away: the demo is ending

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


def run_demo(runners: int, theme: str | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="tuici-demo-"))
    repo = root / "repo"
    try:
        make_repository(repo)
        for number, sample in enumerate(SAMPLES[:3], 1):
            add_commit(repo, sample, number)
        committer = Committer(repo, first=4)
        committer.start()
        try:
            open_control_center(LiveBackend(repo, StateDir.for_repo(repo), max(1, runners)), theme)
        finally:
            committer.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

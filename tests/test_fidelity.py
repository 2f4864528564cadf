"""A verdict equals a clean run of the same commit: whatever the watched work tree holds, whatever pytest command
the project configures. Each job here is compared with the same command run in a fresh clone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import Cluster, GitRepo, git

CALC_TESTS = {
    "src/calc.py": "def add(a, b):\n    return a - b  # the bug\n",
    "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n\n\n"
                          "def test_zero():\n    assert add(0, 0) == 0\n\n\ndef test_slow():\n    assert True\n",
    "tests/conftest.py": "",
    "pyproject.toml": "[tool.pytest.ini_options]\npythonpath = [\"src\"]\n",
}


def clean_run(repo: GitRepo, sha: str, tmp: Path, env: dict[str, str] | None = None) -> tuple[int, tuple[int, ...]]:
    """(exit code, (passed, failed, skipped)) of ``python -m pytest`` in a fresh clone of ``sha``."""
    clone = tmp / f"clean-{sha[:10]}"
    git(tmp, "clone", "-q", str(repo.path), str(clone))
    git(clone, "checkout", "-q", sha)
    junit = clone.parent / f"{clone.name}.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
                          cwd=clone, capture_output=True, env={**os.environ, **(env or {})})
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else next(root.iter("testsuite"))
    tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return done.returncode, (tests - failures - errors - skipped, failures + errors, skipped)


def verdict(job) -> tuple[int, tuple[int, ...]]:
    return job.exit_code, (job.passed, job.failed, job.skipped)


@pytest.fixture
def outside_repo(outside):
    return GitRepo(outside / "repo")


def test_an_uncommitted_fix_and_config_in_the_work_tree_change_nothing(outside_repo, tmp_path):
    """The commit is broken; the work tree holds a fix, a pytest.ini and a pyproject.toml that would deselect
    everything, and configs that would make the command `true`: the job reports the commit as broken, as a clean
    run does.
    (Checkouts used to live inside the repository, where pytest found the work tree's configuration.)"""
    repo = outside_repo
    sha = repo.commit("broken add", files=CALC_TESTS)
    (repo.path / "src" / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (repo.path / "pytest.ini").write_text("[pytest]\naddopts = -k nothing_matches\n")
    (repo.path / "tuici.toml").write_text('command = "true"\n')
    (repo.path / "pyproject.toml").write_text('[tool.pytest.ini_options]\naddopts = "-k nothing"\n'
                                             '[tool.tuici]\ncommand = "true"\n')
    cluster = Cluster(repo, tmp_path)
    try:
        cluster.start_dispatcher()
        cluster.start_observer()
        cluster.start_runner("r1")
        job = cluster.wait_job(sha)
        out = cluster.log_of(job.id)
        assert job.state == "failed", out
        assert verdict(job) == clean_run(repo, sha, tmp_path) == (1, (2, 1, 0)), out
        assert f"rootdir: /tuici/{repo.path.name}" in out  # its own checkout, which no repository contains
    finally:
        cluster.stop()


def test_any_pytest_command_gives_counts_and_a_later_commit_adding_pytest_settings_counts(repo, cluster, tmp_path):
    """`pytest tests/` (not the default command) with the user's own PYTEST_ADDOPTS still gives counts; a later
    commit that adds pytest settings, and one with a nested conftest, are counted as a clean run counts them."""
    cluster.start_observer()
    cluster.start_runner("r1")
    config = 'command = "python -m pytest -q tests/"\nenv = { PYTEST_ADDOPTS = "-p no:randomly" }\n'
    first = repo.commit("tests", files={**CALC_TESTS, "tuici.toml": config})
    job = cluster.wait_job(first)
    assert (job.state, verdict(job)) == ("failed", clean_run(repo, first, tmp_path)), cluster.log_of(job.id)
    settings = "[tool.pytest.ini_options]\npythonpath = [\"src\"]\naddopts = \"-k 'not slow'\"\n"
    second = repo.commit("deselect the slow test", files={"pyproject.toml": settings})
    job = cluster.wait_job(second)
    assert verdict(job) == clean_run(repo, second, tmp_path) == (1, (1, 1, 0)), cluster.log_of(job.id)
    nested = {"tests/deep/test_deeper.py": "def test_fixture(answer):\n    assert answer == 42\n",
              "tests/deep/conftest.py": "import pytest\n\n@pytest.fixture\ndef answer():\n    return 42\n",
              "src/calc.py": "def add(a, b):\n    return a + b\n"}
    third = repo.commit("nested conftest, and the fix", files=nested)
    job = cluster.wait_job(third)
    assert job.state == "passed" and verdict(job) == clean_run(repo, third, tmp_path) == (0, (3, 0, 0))


def test_the_pytest_cache_survives_between_jobs_so_last_failed_works(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    config = 'command = "python -m pytest -q --lf"\n'
    first = repo.commit("tests", files={**CALC_TESTS, "tuici.toml": config})
    assert cluster.wait_job(first).state == "failed"
    second = repo.commit("unrelated", files={"README": "x\n"})
    job = cluster.wait_job(second)
    out = cluster.log_of(job.id)
    assert (job.passed, job.failed, job.skipped) == (0, 1, 0), out  # only the one that failed last time ran

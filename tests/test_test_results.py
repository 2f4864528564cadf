"""Per-test results end to end: real pytest suites in real git repositories, run by real tuici processes, and
read back with the commands a user runs (`tuici tests`, `history`, `flaky`, `status --json`)."""

from __future__ import annotations

import json

from conftest import toml_command, tuici
from test_testcases import MIXED

PYTEST = "python -m pytest -q -p no:cacheprovider tests"


def start(cluster) -> None:
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(cluster.repo.head())


def cases_of(repo, job_id: int, *args: str) -> list[dict]:
    return json.loads(tuici("tests", str(job_id), str(repo.path), "--json", *args, cwd=repo.path).stdout)


def history_of(repo, test: str, *args: str) -> list[dict]:
    return json.loads(tuici("history", test, str(repo.path), "--json", *args, cwd=repo.path).stdout)


def test_every_case_of_a_suite_is_stored_with_its_outcome(repo, cluster):
    start(cluster)
    sha = repo.commit("a mixed suite", files={"tests/__init__.py": "", "tests/test_mixed.py": MIXED},
                      config=toml_command(PYTEST, 60))
    job = cluster.wait_job(sha, timeout=60)
    assert job.state == "failed"
    cases = cases_of(repo, job.id)
    got = {case["name"]: case["outcome"] for case in cases}
    module = "tests/test_mixed.py"
    assert got[f"{module}::test_fail"] == "failed" and got[f"{module}::test_error"] == "error"
    assert got[f"{module}::test_skip"] == "skipped" and got[f"{module}::test_xfail"] == "xfailed"
    assert [got[f"{module}::test_param[{n}]"] for n in (1, 2, "a b")] == ["passed", "failed", "passed"]
    assert got[f"{module}::TestThing::TestInner::test_deep"] == "passed" and len(got) == 13
    failing = [case["name"] for case in cases if case["outcome"] in ("failed", "error")]
    assert [case["name"] for case in cases[:len(failing)]] == failing  # failures first
    fail = next(case for case in cases if case["name"] == f"{module}::test_fail")
    assert set(fail) >= {"name", "outcome", "duration_s", "message"} and "one is not two" in fail["message"]
    assert "assert 1 == 2" in fail["details"] and fail["broken_by"]["since"] == sha
    assert [case["name"] for case in cases_of(repo, job.id, "--failed")] == failing

    status = json.loads(tuici("status", str(repo.path), "--json", cwd=repo.path).stdout)
    listed = next(j for j in status["jobs"] if j["id"] == job.id)
    assert sorted(listed["failed_tests"]) == sorted(failing)
    assert (listed["passed"], listed["failed"], listed["skipped"]) == (6, 5, 2)
    text = tuici("tests", str(job.id), str(repo.path), cwd=repo.path).stdout
    assert text.startswith(f"job {job.id} failed") and f"failed   {module}::test_fail" in text

    missing = tuici("tests", "999", str(repo.path), cwd=repo.path, check=False)
    assert missing.returncode == 2 and missing.stderr == "tuici: no job 999\n"


# What pytest writes for a generated file of 50,000 parametrized cases, one of them failing: written by a script,
# as other tools write their JUnit XML, because pytest itself takes a minute over them on a loaded 2-core machine.
WRITE_JUNIT = '''\
import os
cases = []
for n in range(50_000):
    failure = '<failure message="assert 7 != 7">n = 7</failure>' if n == 7 else ""
    cases.append(f'<testcase classname="tests.test_many" name="test_case[{n}]" time="0.001">{failure}</testcase>')
with open(os.environ["TUICI_JUNIT_XML"], "w") as fh:
    fh.write('<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="0" '
             f'tests="50000">{"".join(cases)}</testsuite></testsuites>')
raise SystemExit(1)
'''
MANY = "import pytest\n\n@pytest.mark.parametrize('n', range(50_000))\ndef test_case(n):\n    assert n != 7\n"


def test_fifty_thousand_cases_are_stored_and_listed(repo, cluster):
    start(cluster)
    sha = repo.commit("many tests", files={"tests/test_many.py": MANY, "write_junit.py": WRITE_JUNIT},
                      config=toml_command("python write_junit.py", 120))
    job = cluster.wait_job(sha, timeout=120)
    assert (job.state, job.passed, job.failed, job.failed_tests) == ("failed", 49_999, 1,
                                                                     ["tests/test_many.py::test_case[7]"])
    cases = cases_of(repo, job.id)
    assert len(cases) == 50_000 and len({case["name"] for case in cases}) == 50_000
    assert cases[0]["name"] == "tests/test_many.py::test_case[7]" and cases[0]["outcome"] == "failed"
    assert cases[1]["name"] == "tests/test_many.py::test_case[0]" and cases[1]["outcome"] == "passed"
    assert [case["name"] for case in cases_of(repo, job.id, "--failed")] == ["tests/test_many.py::test_case[7]"]
    assert "exceeds" not in cluster.component_log("dispatcher")


SUITE = '''\
BROKEN = {broken}  # in commit {n}

def test_steady():
    pass

def test_sometimes():
    assert not BROKEN, "broken on purpose"
'''


def test_history_across_ten_commits_with_broken_by_and_fixed_by(repo, cluster):
    start(cluster)
    shas = []
    for n in range(1, 11):
        broken = 4 <= n < 8  # broken by commit 4, fixed by commit 8
        files = {"tests/test_suite.py": SUITE.format(broken=broken, n=n)}
        shas.append(repo.commit(f"commit {n}", files=files, config=toml_command(PYTEST, 60) if n == 1 else None))
    jobs = [cluster.wait_job(sha, timeout=120) for sha in shas]
    assert [job.state for job in jobs] == ["passed"] * 3 + ["failed"] * 4 + ["passed"] * 3

    history = history_of(repo, "test_sometimes")
    assert [(e["commit"], e["job"]) for e in history] == [(job.commit, job.id) for job in reversed(jobs)]
    assert [e["outcome"] for e in history] == ["passed"] * 3 + ["failed"] * 4 + ["passed"] * 3
    assert set(history[0]) >= {"commit", "job", "outcome", "duration_s"}
    assert len(history_of(repo, "tests/test_suite.py::test_steady", "--branch", "main", "--limit", "3")) == 3

    broken = {case["name"]: case for case in cases_of(repo, jobs[3].id)}["tests/test_suite.py::test_sometimes"]
    assert broken["broken_by"] == {"commit": shas[3], "since": shas[3], "after": shas[2], "untested": 0}
    assert broken["history"] == "...F"
    still = {case["name"]: case for case in cases_of(repo, jobs[6].id)}["tests/test_suite.py::test_sometimes"]
    assert still["broken_by"]["commit"] == shas[3] and still["history"] == "...FFFF"
    fixed = {case["name"]: case for case in cases_of(repo, jobs[7].id)}["tests/test_suite.py::test_sometimes"]
    assert fixed["fixed_by"] == {"commit": shas[7], "since": shas[7], "after": shas[6], "untested": 0}
    text = tuici("tests", str(jobs[3].id), str(repo.path), "--failed", cwd=repo.path).stdout
    assert f"broken by {shas[3][:10]}" in text and "history ...F" in text


FLAKY = '''\
from pathlib import Path

MARK = Path(__file__).with_name(".failed-once")  # in the job's checkout: there for its retry, gone for the next job

def test_flaky():
    if not MARK.exists():
        MARK.write_text("")
        assert False, "fails on the first run of each commit"

def test_steady():
    pass
'''


def test_a_flaky_test_passes_on_retry_and_is_flagged(repo, cluster):
    start(cluster)
    config = toml_command(PYTEST, 60) + "retry_failed = 1\n"
    first = repo.commit("flaky", files={"tests/test_flaky.py": FLAKY}, config=config)
    job = cluster.wait_job(first, timeout=60)
    assert (job.state, job.flaky_tests, job.failed_tests) == ("passed", ["tests/test_flaky.py::test_flaky"], [])
    assert (job.passed, job.failed) == (2, 0)
    log = cluster.log_of(job.id)
    assert "retry 1 of 1: 1 failed test" in log and "python -m pytest tests/test_flaky.py::test_flaky" in log
    assert "flaky: 1 test failed, then passed on retry: tests/test_flaky.py::test_flaky" in log
    case = cases_of(repo, job.id)[0]
    assert case["name"] == "tests/test_flaky.py::test_flaky" and (case["outcome"], case["flaky"]) == ("passed", True)
    assert "fails on the first run" in case["message"]
    text = tuici("tests", str(job.id), str(repo.path), cwd=repo.path).stdout
    assert "flaky    tests/test_flaky.py::test_flaky" in text and "first failure: " in text

    second = cluster.wait_job(repo.commit("again"), timeout=60)
    assert second.state == "passed" and second.flaky_tests == job.flaky_tests
    (flaky,) = json.loads(tuici("flaky", str(repo.path), "--json", cwd=repo.path).stdout)
    assert (flaky["name"], flaky["jobs"], flaky["commits"]) == ("tests/test_flaky.py::test_flaky", 2, 2)
    assert (flaky["last_job"], flaky["last_commit"], flaky["branch"]) == (second.id, second.commit, "main")
    listed = tuici("flaky", str(repo.path), cwd=repo.path).stdout
    assert "tests/test_flaky.py::test_flaky  2 jobs on 2 commits" in listed

    # Without retries the same test fails the job; a test that fails every time is retried and still fails it.
    always = FLAKY.replace("if not MARK.exists():", "if True:")
    failed = cluster.wait_job(repo.commit("always", files={"tests/test_flaky.py": always}), timeout=60)
    assert (failed.state, failed.flaky_tests) == ("failed", [])
    assert "retry 1: 0 passed, 1 still failing" in cluster.log_of(failed.id)
    plain = cluster.wait_job(repo.commit("no retries", files={"tests/test_flaky.py": FLAKY},
                                         config=toml_command(PYTEST, 60)), timeout=60)
    assert (plain.state, plain.failed_tests) == ("failed", ["tests/test_flaky.py::test_flaky"])


def test_a_bad_retry_failed_fails_the_job_naming_file_and_key(repo, cluster):
    start(cluster)
    job = cluster.wait_job(repo.commit("bad", config=toml_command("true") + "retry_failed = -2\n"))
    assert job.state == "error"
    assert job.error == "bad config: tuici.toml: key 'retry_failed': must be a whole number from 0 to 10"

"""Test cases: JUnit XML read as pytest writes it (and as hostile code might), retries, blame, and their store.

No tuici process here: pytest runs for real on generated suites, and the store is a real SQLite file; the
rules of ``tuici.testcases`` are checked alone.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from tuici import testcases
from tuici import wire as p
from tuici.dispatcher.testresults import Incoming
from tuici.runner.junit import MAX_JUNIT_SIZE, read_junit
from tuici.store import Batch, JobTests, Store
from tuici.testcases import NodeIds, Tested
from tuici.testrecord import UnknownTest

MIXED = '''\
import pytest

def test_pass(): pass
def test_fail(): assert 1 == 2, "one is not two"

@pytest.fixture
def broken(): raise RuntimeError("fixture broke")
def test_error(broken): pass

@pytest.fixture
def messy():
    yield
    raise ValueError("teardown broke")
def test_fail_then_teardown_error(messy): assert False

@pytest.mark.skip(reason="later")
def test_skip(): pass
@pytest.mark.xfail(reason="known bug")
def test_xfail(): assert False
@pytest.mark.xfail(reason="fixed?")
def test_xpass(): pass
@pytest.mark.xfail(reason="strict", strict=True)
def test_xpass_strict(): pass

@pytest.mark.parametrize("n", [1, 2, "a b"])
def test_param(n): assert n != 2

class TestThing:
    def test_method(self): pass
    class TestInner:
        def test_deep(self): pass
'''


def run_pytest(root: Path, *args: str, cwd: Path | None = None) -> Path:
    junit = root / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                    f"--junitxml={junit}", *args], cwd=cwd or root, capture_output=True, timeout=120)
    return junit


def files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*.py"))


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "tests" / "unit").mkdir(parents=True)
    (root / "tests" / "__init__.py").write_text("")
    (root / "tests" / "unit" / "__init__.py").write_text("")
    (root / "tests" / "unit" / "test_mixed.py").write_text(MIXED)
    (root / "tests" / "test_broken.py").write_text("import no_such_module\n")
    return root


class TestJunitFromRealPytest:
    def test_every_outcome_with_pytest_node_ids(self, suite):
        junit = run_pytest(suite, "tests", "--continue-on-collection-errors")
        report = read_junit(junit, NodeIds(lambda: files(suite)))
        assert report is not None
        got = {case.name: case.outcome for case in report.cases}
        mixed = "tests/unit/test_mixed.py"
        assert got == {
            "tests/test_broken.py": "error",  # the collection error: the module itself
            f"{mixed}::test_pass": "passed",
            f"{mixed}::test_fail": "failed",
            f"{mixed}::test_error": "error",
            f"{mixed}::test_fail_then_teardown_error": "failed",  # two testcase elements, one case
            f"{mixed}::test_skip": "skipped",
            f"{mixed}::test_xfail": "xfailed",
            f"{mixed}::test_xpass": "passed",  # pytest writes a non-strict XPASS as a plain pass
            f"{mixed}::test_xpass_strict": "failed",  # and a strict one as a failure
            f"{mixed}::test_param[1]": "passed",
            f"{mixed}::test_param[2]": "failed",
            f"{mixed}::test_param[a b]": "passed",
            f"{mixed}::TestThing::test_method": "passed",
            f"{mixed}::TestThing::TestInner::test_deep": "passed",
        }
        cases = {case.name: case for case in report.cases}
        fail = cases[f"{mixed}::test_fail"]
        assert "one is not two" in fail.message and "assert 1 == 2" in fail.details
        assert cases[f"{mixed}::test_error"].message.startswith("failed on setup")
        assert cases[f"{mixed}::test_xpass_strict"].message.startswith("[XPASS(strict)]")
        assert cases[f"{mixed}::test_skip"].message == "later" and not cases[f"{mixed}::test_skip"].details
        assert report.counts == (6, 6, 2)  # passed (xpass included), failed and erred, skipped and xfailed

    def test_the_node_ids_select_the_tests_again(self, suite):
        """What a retry relies on: pytest takes the names back as node ids."""
        report = read_junit(run_pytest(suite, "tests/unit"), NodeIds(lambda: files(suite)))
        assert report is not None
        names = [case.name for case in report.cases]
        again = read_junit(run_pytest(suite, *names), NodeIds(lambda: files(suite)))
        assert again is not None and sorted(case.name for case in again.cases) == sorted(names)

    def test_a_run_from_a_subdirectory_and_the_xunit1_family(self, suite):
        """pytest's ids are then relative to that directory; tuici's stay relative to the repository."""
        unit = suite / "tests" / "unit"
        (unit / "pytest.ini").write_text("[pytest]\njunit_family = xunit1\n")
        report = read_junit(run_pytest(suite, cwd=unit), NodeIds(lambda: files(suite)))
        assert report is not None
        assert "tests/unit/test_mixed.py::TestThing::TestInner::test_deep" in {case.name for case in report.cases}

    def test_another_tool_keeps_classname_and_name(self, tmp_path):
        junit = tmp_path / "j.xml"
        junit.write_text('<testsuite tests="1"><testcase classname="com.example.FooTest" name="bar" time="x"/>'
                         "</testsuite>")
        report = read_junit(junit, NodeIds(lambda: []))
        assert report is not None and report.cases == [p.TestCase(name="com.example.FooTest::bar", outcome="passed")]


class TestHostileJunit:
    def _read(self, path: Path):
        return read_junit(path, NodeIds(lambda: []))

    def test_entities_and_dtds_are_refused(self, tmp_path):
        bomb = tmp_path / "bomb.xml"
        bomb.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
                        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
                        '<testsuite tests="1"><testcase classname="m" name="&c;"/></testsuite>')
        external = tmp_path / "external.xml"
        external.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY t SYSTEM "file:///etc/passwd">]>'
                            '<testsuite><testcase classname="m" name="&t;"/></testsuite>')
        assert self._read(bomb) is None and self._read(external) is None

    def test_links_fifos_and_huge_files_are_not_read(self, tmp_path):
        real = tmp_path / "real.xml"
        real.write_text('<testsuite tests="1"><testcase classname="m" name="t"/></testsuite>')
        link = tmp_path / "link.xml"
        link.symlink_to(real)
        fifo = tmp_path / "fifo.xml"
        os.mkfifo(fifo)
        huge = tmp_path / "huge.xml"
        with open(huge, "wb") as fh:
            fh.truncate(MAX_JUNIT_SIZE + 1)
        assert self._read(real) is not None
        assert self._read(link) is None and self._read(fifo) is None and self._read(huge) is None
        assert self._read(tmp_path / "missing.xml") is None and self._read(tmp_path / "bad.xml") is None

    def test_text_is_capped(self, tmp_path):
        junit = tmp_path / "long.xml"
        traceback = "\n".join(f"line {n} " + "x" * 300 for n in range(100))
        junit.write_text(f'<testsuite><testcase classname="m" name="{"n" * 5000}" time="nan">'
                         f'<failure message="{"m" * 5000}">{traceback}</failure></testcase></testsuite>')
        report = self._read(junit)
        assert report is not None
        (case,) = report.cases
        assert len(case.name) == p.MAX_TEST_NAME and len(case.message) == p.MAX_TEST_MESSAGE
        assert len(case.details) <= p.MAX_TEST_DETAILS and case.details.startswith("line 0 ")
        assert case.duration_s == 0.0 and case.outcome == "failed"


def test_a_piece_of_cases_at_every_cap_fits_in_a_frame():
    case = p.TestCase(name="\u0800" * p.MAX_TEST_NAME, outcome="failed", duration_s=1.5,
                      message="\u0800" * p.MAX_TEST_MESSAGE, details="\u0800" * p.MAX_TEST_DETAILS)
    piece = p.TestCases(job_id=1, attempt=1, piece=0, cases=[case] * testcases.CASES_PER_PIECE)
    assert len(p.encode(piece)) < p.MAX_FRAME
    with pytest.raises(p.ProtocolError):  # and the decoder refuses more text than the caps
        p.decode(msgspec.msgpack.encode({**msgspec.to_builtins(piece), "cases": [
            {**msgspec.to_builtins(case), "details": "d" * (p.MAX_TEST_DETAILS + 1)}]}))
    result = p.JobResult(job_id=1, attempt=1, exit_code=1, duration_s=1, log_size=0,
                         failed_tests=["t"] * (p.MAX_LISTED_TESTS + 1))
    with pytest.raises(p.ProtocolError):  # nor a result listing more tests than a job lists
        p.decode(p.encode(result)[4:])


class TestRetries:
    def test_a_test_that_passes_on_retry_is_flaky_and_keeps_its_first_failure(self):
        cases = [p.TestCase(name="a", outcome="failed", message="boom", details="tb"),
                 p.TestCase(name="b", outcome="failed"), p.TestCase(name="c", outcome="error"),
                 p.TestCase(name="d", outcome="passed")]
        assert testcases.to_retry(cases) == ["a", "b", "c"]
        retried = [p.TestCase(name="a", outcome="passed", duration_s=0.5), p.TestCase(name="b", outcome="failed"),
                   p.TestCase(name="c", outcome="skipped")]
        after = testcases.after_retry(cases, retried)
        assert after[0] == p.TestCase(name="a", outcome="passed", duration_s=0.5, message="boom", details="tb",
                                      flaky=True)
        assert after[1:] == cases[1:]  # failed again; skipped is no pass; d was not retried
        s = testcases.summary(after)
        assert (s.passed, s.failed, s.skipped, s.failed_tests, s.flaky_tests) == (2, 2, 0, ["b", "c"], ["a"])
        reports = [p.TestReport(**msgspec.structs.asdict(case)) for case in after]
        reports[3].fixed_by = p.Change(commit="c", since="c", after="b")
        reports.append(p.TestReport(name="0", outcome="passed"))
        ordered = sorted(reports, key=testcases.order_key)
        assert [case.name for case in ordered] == ["b", "c", "a", "d", "0"]  # failed, error, flaky, fixed, the rest

    def test_serve_says_which_tests_were_flaky(self):
        from tuici.serve import describe

        job = p.JobInfo(id=3, commit="a" * 40, branch="main", state="passed", passed=5, failed=0, skipped=0,
                        flaky_tests=[f"t{n}" for n in range(4)])
        line = describe(p.Event(seq=1, ts=0, kind="job.finished", job=job))
        assert line.endswith("5 passed, 0 failed, 0 skipped (4 flaky: t0, t1, t2, …)")

    def test_only_node_ids_are_retried(self):
        assert testcases.is_node_id("tests/test_x.py::test_a[1]")
        for name in ("tests/test_x.py", "com.example.Foo::bar", "/abs/test_x.py::t", "-x.py::t"):
            assert not testcases.is_node_id(name)


def at(n: int) -> Tested:
    return Tested(commit=f"c{n}", job=n, position=n)


def no_gaps(after: Tested, since: Tested) -> int:
    return since.position - after.position - 1


class TestBlame:
    def test_broken_by_the_commit_after_the_last_pass(self):
        earlier = [(at(4), {"a", "b"}), (at(3), {"b"}), (at(2), set()), (at(1), {"b"})]
        changes = testcases.broken_by(["a", "b"], at(5), earlier, no_gaps)
        assert changes["a"] == p.Change(commit="c4", since="c4", after="c3")
        assert changes["b"] == p.Change(commit="c3", since="c3", after="c2")

    def test_untested_commits_make_a_range(self):
        gaps = [(at(2), set())]
        change = testcases.broken_by(["a"], at(7), gaps, no_gaps)["a"]
        assert change == p.Change(commit=None, since="c7", after="c2", untested=4)

    def test_a_test_failing_since_the_first_record(self):
        earlier = [(at(2), {"a"}), (at(1), {"a"})]
        assert testcases.broken_by(["a"], at(3), earlier, no_gaps)["a"] == p.Change(commit=None, since="c1")

    def test_as_tuici_tests_says_it(self):
        from tuici.cli import _change

        sha = [f"{n}" * 40 for n in range(4)]
        assert _change(p.Change(commit=sha[1], since=sha[1], after=sha[0]), "broken") == f"broken by {sha[1][:10]}"
        assert _change(p.Change(commit=None, since=sha[3], after=sha[0], untested=2), "fixed") == (
            f"fixed between {sha[0][:10]} and {sha[3][:10]} (2 untested commits in between)")
        assert _change(p.Change(commit=None, since=sha[2]), "broken") == (
            f"failing since {sha[2][:10]} (none before on record)")

    def test_fixed_by_and_the_history_strip(self):
        fixed = testcases.fixed_by(["a", "b"], at(3), (at(2), {"a"}), no_gaps)
        assert fixed == {"a": p.Change(commit="c3", since="c3", after="c2")}
        steps = [{"a": "failed"}, {"a": "passed"}, {}, {"a": "error"}]
        assert testcases.history_strip(["a"], steps) == {"a": "E-.F"}


def test_incoming_pieces_must_come_in_order_and_all_of_them():
    incoming = Incoming()
    case = p.TestCase(name="t", outcome="passed")
    result = p.JobResult(job_id=1, attempt=1, exit_code=0, duration_s=1, log_size=0, test_cases=2)
    with pytest.raises(p.ProtocolError):
        incoming.add("r", p.TestCases(job_id=1, attempt=1, piece=1, cases=[case]))
    incoming.add("r", p.TestCases(job_id=1, attempt=1, piece=0, cases=[case]))
    incoming.add("r", p.TestCases(job_id=1, attempt=1, piece=0, cases=[case]))  # sent again: starts over
    incoming.add("r", p.TestCases(job_id=1, attempt=1, piece=1, cases=[case]))
    assert incoming.take("r", result) == [case, case]
    with pytest.raises(p.ProtocolError):  # nothing held any more, and the result counts two
        incoming.take("r", result)


class TestStore:
    """Test results in a real store, written as the journal writes them."""

    @staticmethod
    def store(tmp_path: Path, jobs: list[tuple[int, str, dict[str, p.TestOutcome]]], commits: int,
              branch: str = "main") -> Store:
        store = Store(tmp_path / "tuici.db")
        store.open()
        batch = Batch()
        for n in range(1, commits + 1):
            batch.commits.append((p.CommitInfo(sha=f"{n:040x}", branch=branch), float(n)))
        store.write(batch)
        for job_id, sha, outcomes in jobs:  # one batch each, in the order given (jobs may finish out of order)
            cases = [p.TestCase(name=name, outcome=outcome, flaky=outcome == "passed" and name.endswith("flaky"))
                     for name, outcome in outcomes.items()]
            store.write(Batch(tests=[JobTests(job_id, sha, branch, float(job_id), cases)]))
        return store

    def test_blame_history_and_flaky_from_the_branch(self, tmp_path):
        sha = [f"{n:040x}" for n in range(11)]
        jobs = [
            (1, sha[1], {"t_a": "passed", "t_b": "failed", "t_flaky": "passed"}),
            (2, sha[2], {"t_a": "passed", "t_b": "passed"}),
            # commits 3 and 4 untested
            (5, sha[5], {"t_a": "failed", "t_b": "passed", "t_new": "failed"}),
            (7, sha[7], {"t_a": "failed", "t_b": "failed"}),
            (6, sha[6], {"t_a": "failed", "t_b": "passed"}),  # finished after commit 7's job
            (8, sha[7], {"t_a": "passed", "t_b": "failed"}),  # a rerun of commit 7: t_a is flaky there
        ]
        store = self.store(tmp_path, jobs, commits=10)
        try:
            reports = {r.name: r for r in store.job_tests(5, failed_only=False, history=5) or []}
            assert [r.name for r in store.job_tests(5, False, 0) or []] == ["t_a", "t_new", "t_b"]
            assert reports["t_a"].broken_by == p.Change(commit=None, since=sha[5], after=sha[2], untested=2)
            assert reports["t_new"].broken_by == p.Change(commit=None, since=sha[5], after=sha[2], untested=2)
            assert reports["t_a"].history == "..F" and reports["t_b"].history == ""
            assert reports["t_b"].fixed_by is None  # t_b passed on the previous tested commit too

            latest = {r.name: r for r in store.job_tests(8, failed_only=False, history=20) or []}
            assert latest["t_b"].broken_by == p.Change(commit=sha[7], since=sha[7], after=sha[6])
            assert latest["t_a"].fixed_by == p.Change(commit=sha[7], since=sha[7], after=sha[6])
            assert latest["t_b"].history == "F...F"  # the tested commits 1, 2, 5, 6 and 7 (by its latest job)
            assert [r.name for r in store.job_tests(8, failed_only=True, history=0) or []] == ["t_b"]

            name, branch, entries = store.history("t_a", "", 0)
            assert (name, branch) == ("t_a", "main")
            assert [(e.commit, e.job, e.outcome) for e in entries] == [
                (sha[7], 8, "passed"), (sha[7], 7, "failed"), (sha[6], 6, "failed"), (sha[5], 5, "failed"),
                (sha[2], 2, "passed"), (sha[1], 1, "passed")]
            with pytest.raises(UnknownTest, match="tests match"):
                store.history("t_", "", 0)
            with pytest.raises(UnknownTest, match="no test"):
                store.history("t_zzz", "", 0)

            flaky = {t.name: t for t in store.flaky()}
            assert set(flaky) == {"t_a", "t_flaky"}
            assert (flaky["t_a"].jobs, flaky["t_a"].commits, flaky["t_a"].last_job) == (1, 1, 8)
            assert store.job_tests(99, False, 0) is None
        finally:
            store.close()

    def test_fifty_thousand_cases_in_one_write(self, tmp_path):
        cases = {f"tests/test_many.py::test_case[{n}]": "passed" for n in range(50_000)}
        cases["tests/test_many.py::test_case[7]"] = "failed"
        store = self.store(tmp_path, [(1, f"{1:040x}", cases)], commits=1)
        try:
            reports = store.job_tests(1, failed_only=False, history=20) or []
            assert len(reports) == 50_000 and reports[0].outcome == "failed" and reports[0].history == "F"
        finally:
            store.close()

    def test_through_the_store_thread(self, tmp_path):
        """As the dispatcher asks: ``Store.run``, off the event loop."""
        store = self.store(tmp_path, [(1, f"{1:040x}", {"t": "failed"})], commits=1)
        store.close()

        async def ask() -> list[p.TestReport] | None:
            store.open()
            try:
                return await store.run(store.job_tests, 1, True, 0)
            finally:
                await asyncio.to_thread(store.shutdown)
        assert [r.name for r in asyncio.run(ask()) or []] == ["t"]

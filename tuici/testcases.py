"""What a test case is to tuici: its outcome and id as a JUnit XML element gives them, what a retry of the
failing ones changes, what a job reports of them, and where on its branch a test broke or was fixed.

Pure rules, no I/O: the runner reads the (hostile) XML file in ``runner/junit.py``, the store keeps the results
and walks a branch's history through these functions. Tested alone in tests/test_testcases.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Collection, Hashable, Iterable, Mapping, Sequence, TypeVar

from . import wire as p

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

FAILING = frozenset({"failed", "error"})
PASSING = frozenset({"passed", "xpassed"})
# The letters pytest prints for each outcome, in a test's history strip; NOT_RUN where a tested commit of the
# branch did not have the test.
LETTERS: dict[p.TestOutcome, str] = {"passed": ".", "failed": "F", "error": "E", "skipped": "s", "xfailed": "x",
                                     "xpassed": "X"}
NOT_RUN = "-"
HISTORY_STRIP = 20  # outcomes on the branch shown for each failing or flaky test (`tuici tests`, the tests view)
TRACEBACK_LINES = 30  # of a failure's traceback, the first lines are kept
# A piece of a job's test cases: with every text at its cap (MAX_TEST_NAME, ..., a few bytes of msgpack each),
# still far below the frame limit (tests/test_testcases.py checks it).
CASES_PER_PIECE = 500
MAX_CASES = 1_000_000  # test cases of one job, at most (a dispatcher refuses more)
# When one test is reported twice (pytest writes a test whose call failed and whose teardown then erred as two
# testcase elements of one name), the one ranked higher stands.
_RANK: dict[str, int] = {"passed": 0, "skipped": 1, "xfailed": 2, "xpassed": 3, "error": 4, "failed": 5}
# How an xpass is written: pytest before 5 (and some plugins) as a skip with this message; pytest since then
# writes a non-strict XPASS as a plain pass (there is no telling it apart), and a strict one as a failure.
_XPASS_MESSAGE = "xfail-marked test passes unexpectedly"


def cap(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def first_lines(text: str, lines: int, limit: int) -> str:
    kept = text.split("\n", lines)
    return cap("\n".join(kept[:lines]) + ("\n…" if len(kept) > lines else ""), limit)


# ---------------------------------------------------------------------- node ids


class NodeIds:
    """pytest's node ids (``path/to/test_x.py::Class::test_name[param]``) from what JUnit XML keeps of them:
    ``classname``, the dotted module path followed by the classes, and ``name``, the function and its params.

    Where the module ends and the classes begin, and whether a dot was a ``/``, is told by the files the commit
    tracks: the longest dotted prefix of ``classname`` that is a tracked ``.py`` file is the module. A test run
    from a subdirectory (its own rootdir) has paths relative to that: a prefix may also be the tail of one
    tracked path alone. Without a match (another language's tests, a ``junit_prefix``), ``classname::name``.
    ``tracked`` is called once, when first needed.
    """

    def __init__(self, tracked: Callable[[], Iterable[str]]):
        self._tracked = tracked
        self._modules: dict[str, str | None] | None = None  # dotted path (or a tail of one) -> file; None: ambiguous

    def _index(self) -> dict[str, str | None]:
        if self._modules is None:
            exact: dict[str, str] = {}
            tails: dict[str, str | None] = {}
            for path in self._tracked():
                if not path.endswith(".py"):
                    continue
                parts = path[:-3].split("/")
                exact[".".join(parts)] = path
                for start in range(1, len(parts)):
                    tail = ".".join(parts[start:])
                    tails[tail] = None if tail in tails and tails[tail] != path else path
            self._modules = {**tails, **exact}
        return self._modules

    def __call__(self, classname: str, name: str) -> str:
        parts = [part for part in classname.split(".") if part] if classname else []
        if not parts:  # a collection error: the module itself, as its dotted path
            module = self._index().get(name) if name else None
            return module or name or "?"
        modules = self._index()
        for end in range(len(parts), 0, -1):
            path = modules.get(".".join(parts[:end]))
            if path is not None:
                return "::".join([path, *parts[end:], name])
        return f"{classname}::{name}"


def is_node_id(name: str) -> bool:
    """Whether ``name`` selects a test for pytest (a ``.py`` file, then ``::`` and more)."""
    path, sep, rest = name.partition("::")
    return bool(sep and rest) and path.endswith(".py") and not path.startswith(("/", "-"))


# ---------------------------------------------------------------------- a testcase element


def case_from_xml(element: Element, node_ids: NodeIds) -> p.TestCase | None:
    """The test case a JUnit ``<testcase>`` element reports, or None for one without a name."""
    classname = element.get("classname") or ""
    name = element.get("name") or ""
    if not name and not classname:
        return None
    outcome: p.TestOutcome = "passed"
    message = details = ""
    first: dict[str, Element] = {}
    for child in element:
        first.setdefault(child.tag, child)
    found = next((first[tag] for tag in ("failure", "error", "skipped") if tag in first), None)
    if found is not None:
        text = found.text or ""
        message = found.get("message") or text.strip().split("\n", 1)[0]
        if found.tag == "failure":
            outcome = "failed"
        elif found.tag == "error":
            outcome = "error"
        elif found.get("type") == "pytest.xfail":
            outcome = "xfailed"
        elif message == _XPASS_MESSAGE:
            outcome = "xpassed"
        else:
            outcome = "skipped"
        if outcome in FAILING:
            details = first_lines(text, TRACEBACK_LINES, p.MAX_TEST_DETAILS)
    return p.TestCase(name=cap(node_ids(classname, name), p.MAX_TEST_NAME), outcome=outcome,
                      duration_s=_seconds(element.get("time")), message=cap(message, p.MAX_TEST_MESSAGE),
                      details=details)


def _seconds(text: str | None) -> float:
    try:
        value = float(text or 0)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and 0 <= value <= 1e9 else 0.0


def merged(cases: Iterable[p.TestCase]) -> list[p.TestCase]:
    """One case per name, in the order first reported: where a name came twice, the outcome ranked higher."""
    by_name: dict[str, p.TestCase] = {}
    for case in cases:
        known = by_name.get(case.name)
        if known is None or _RANK[case.outcome] > _RANK[known.outcome]:
            by_name[case.name] = case
    return list(by_name.values())


# ---------------------------------------------------------------------- retries and the job's report


def to_retry(cases: Iterable[p.TestCase]) -> list[str]:
    """The failing tests a retry would run."""
    return [case.name for case in cases if case.outcome in FAILING]


def after_retry(cases: list[p.TestCase], retried: Iterable[p.TestCase]) -> list[p.TestCase]:
    """The job's cases once its failing ones ran again: one that passed this time is passed and flaky (keeping
    the first failure's message and traceback, which say what went wrong); any other stays as it was (a test
    that failed and then was skipped has not passed)."""
    again = {case.name: case for case in retried}
    result = []
    for case in cases:
        rerun = again.get(case.name)
        if case.outcome in FAILING and rerun is not None and rerun.outcome in PASSING:
            case = p.TestCase(name=case.name, outcome=rerun.outcome, duration_s=rerun.duration_s,
                              message=case.message, details=case.details, flaky=True)
        result.append(case)
    return result


@dataclass(frozen=True)
class Summary:
    """What a job's result says of its cases: counts, and the first failing and flaky tests by name."""

    passed: int
    failed: int
    skipped: int
    failed_tests: list[str]
    flaky_tests: list[str]


def summary(cases: Collection[p.TestCase]) -> Summary:
    failing = [case.name for case in cases if case.outcome in FAILING]
    skipped = sum(1 for case in cases if case.outcome in ("skipped", "xfailed"))
    return Summary(passed=len(cases) - len(failing) - skipped, failed=len(failing), skipped=skipped,
                   failed_tests=failing[:p.MAX_LISTED_TESTS],
                   flaky_tests=[case.name for case in cases if case.flaky][:p.MAX_LISTED_TESTS])


def order_key(case: p.TestReport) -> tuple[int, str]:
    """Failures first (failed, then errors), then the flaky, then those just fixed, then the rest; by name within
    each."""
    rank = (0 if case.outcome == "failed" else 1 if case.outcome == "error" else 2 if case.flaky
            else 3 if case.fixed_by is not None else 4)
    return rank, case.name


# ---------------------------------------------------------------------- blame


@dataclass(frozen=True)
class Tested:
    """A tested commit of a branch (its latest job with test results), where it stands among the branch's
    commits (``position``: later commits higher)."""

    __test__ = False  # not a test class, whatever pytest makes of its name

    commit: str
    job: int
    position: int


K = TypeVar("K", bound=Hashable)  # what a test is known by: its name, or the store's id for it
Between = Callable[[Tested, Tested], int]  # commits of the branch strictly between two tested ones


def change(after: Tested, since: Tested, between: Between) -> p.Change:
    """The outcome changed between ``after`` and ``since``: by ``since`` itself if no commit between them went
    untested, else by one of those or by ``since`` (a bisect's range)."""
    untested = between(after, since)
    return p.Change(commit=since.commit if untested == 0 else None, since=since.commit, after=after.commit,
                    untested=untested)


def broken_by(failing: Iterable[K], this: Tested, earlier: Iterable[tuple[Tested, Collection[K]]],
              between: Between) -> dict[K, p.Change]:
    """Where each test failing in ``this`` job broke: walking back over the branch's tested commits before it
    (newest first, each with the tests that failed there), its streak of failures ends at the first commit
    where it did not fail: it passed, was skipped, or did not exist yet. A streak that reaches the end of
    ``earlier`` started at its oldest commit, after nothing on record."""
    streak_start = dict.fromkeys(failing, this)
    changes: dict[K, p.Change] = {}
    for tested, failed_there in earlier:
        if not streak_start:
            break
        for key in list(streak_start):
            if key in failed_there:
                streak_start[key] = tested
            else:
                changes[key] = change(tested, streak_start.pop(key), between)
    for key, since in streak_start.items():
        changes[key] = p.Change(commit=None, since=since.commit)
    return changes


def fixed_by(passing: Iterable[K], this: Tested, previous: tuple[Tested, Collection[K]] | None,
             between: Between) -> dict[K, p.Change]:
    """The tests of ``this`` job that failed on the previous tested commit and no longer do."""
    if previous is None:
        return {}
    tested, failed_there = previous
    return {key: change(tested, this, between) for key in passing if key in failed_there}


def history_strip(keys: Iterable[K], steps: Sequence[Mapping[K, p.TestOutcome]]) -> dict[K, str]:
    """Each test's outcomes as letters, oldest first, from ``steps``: its outcomes at tested commits, newest
    first (``NOT_RUN`` where a commit did not have it)."""
    return {key: "".join(LETTERS[step[key]] if key in step else NOT_RUN for step in reversed(steps))
            for key in keys}

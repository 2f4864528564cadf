"""The tests view: one job's test cases, failures first, each failing one with its last outcomes on the branch and
the commit that broke it; ``t`` shows and hides it, ``/`` filters it, Enter shows a failure in the output."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Input

from ... import testcases
from ... import wire as p
from ..formatting import change_short, short_sha, test_badge, test_duration
from ..model import safe
from .inputs import ClearableInput
from .table import Cell, Column, RecordTable

COLUMNS = (
    Column("outcome", 9),
    Column("test", 24, flex=True, keep_end=True),
    Column(f"last {testcases.HISTORY_STRIP}", testcases.HISTORY_STRIP, drop=2, right=True),
    Column("broken by", 16, drop=1),
    Column("time", 6, drop=3, right=True),
)


@dataclass(frozen=True)
class TestFilter:
    """Words that must all be in a test's name or its outcome (``failed``, ``flaky``...), in any case."""

    __test__ = False  # not a test class, whatever pytest makes of its name

    words: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "TestFilter":
        return cls(tuple(text.lower().split()))

    def matches(self, case: p.TestReport) -> bool:
        text = f"{case.name}\n{case.outcome}{' flaky' if case.flaky else ''}".lower()
        return all(word in text for word in self.words)


class TestsPanel(Vertical):
    """The cases of ``job``, as the dispatcher sent them (failures first); its text is made safe on the way in."""

    __test__ = False

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.job: p.JobInfo | None = None
        self.cases: list[p.TestReport] = []
        self.filter = TestFilter()

    def compose(self) -> ComposeResult:
        yield RecordTable(COLUMNS, self._cells, "No test results for this job.", id="tests-table")
        yield ClearableInput(placeholder="words of a test's name or outcome (Enter keeps it, Escape clears)",
                          id="tests-filter")

    def on_mount(self) -> None:
        self.border_title = "Tests"

    @property
    def table(self) -> RecordTable:
        return self.query_one(RecordTable)

    @property
    def selected_case(self) -> p.TestReport | None:
        index = self.table.selected_key
        return None if index is None else self.cases[index]

    def awaiting(self, job: p.JobInfo) -> None:
        """The tests of ``job`` are on their way."""
        self.job, self.cases = job, []
        self.table.empty = "Loading…"
        self._rebuild()

    def show(self, job: p.JobInfo, cases: list[p.TestReport]) -> None:
        self.job = job
        self.cases = [_safe(case) for case in cases]
        self.table.empty = "No test results for this job." if job.state in p.FINAL_STATES else (
            f"Job {job.id} is {job.state}: its tests show here once it ends.")
        self._rebuild()

    def _cells(self, index: int) -> list[Cell]:
        case = self.cases[index]
        badge = test_badge(case)
        changed = change_short(case.broken_by) if case.broken_by is not None else (
            f"fixed {change_short(case.fixed_by)}" if case.fixed_by is not None else "")
        return [(badge.text, badge.style), (case.name, ""), (case.history, "record-table--muted"),
                (changed, ""), (test_duration(case.duration_s), "record-table--muted")]

    def _rebuild(self) -> None:
        keys = [n for n, case in enumerate(self.cases) if self.filter.matches(case)]
        self.table.set_keys(keys)
        self.table.redraw()
        job = self.job
        counts: dict[str, int] = {}
        for case in self.cases:
            word = test_badge(case).word
            counts[word] = counts.get(word, 0) + 1
        summary = ", ".join(f"{n} {word}" for word, n in sorted(counts.items(), key=lambda item: -item[1]))
        self.border_title = "Tests" if job is None else Content.assemble(
            "Tests · ", f"job {job.id} · ", short_sha(job.commit), f" · {summary}" if summary else "")
        query = self.query_one(ClearableInput).value.strip()
        self.border_subtitle = f"filter “{query}”: {len(keys)} of {len(self.cases)}" if query else ""

    # ------------------------------------------------------------------ filtering

    def open_filter(self) -> None:
        box = self.query_one(ClearableInput)
        box.display = True
        box.focus()

    @on(Input.Changed, "#tests-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter = TestFilter.parse(event.value)
        self._rebuild()

    @on(Input.Submitted, "#tests-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.input.display = bool(event.value.strip())
        self.table.focus()


def _safe(case: p.TestReport) -> p.TestReport:
    """The names and messages are the code under test's: shown on one line, without control sequences."""
    case.name, case.message = safe(case.name), safe(case.message)
    return case

"""The tries panel: `tuici try` runs (a work tree tested before it was committed), newest first, apart from the
branch commits. Hidden until there is one."""

from __future__ import annotations

from typing import Callable

from textual.app import ComposeResult
from textual.containers import Vertical

from ..formatting import age, job_badge, job_duration, short_sha, test_counts
from ..model import Model
from .table import Cell, Column, RecordTable

COLUMNS = (
    Column("try", 7),
    Column("status", 11),
    Column("job", 5, right=True),
    Column("branch", 12, drop=2),
    Column("age", 4, drop=4, right=True),
    Column("time", 6, drop=3, right=True),
    Column("tests", 11, drop=5),
    Column("subject", 10, flex=True),
)
MAX_ROWS = 5  # rows shown before it scrolls: the commits below keep the room


class TriesPanel(Vertical):
    def __init__(self, model: Model, clock: Callable[[], float], *, id: str | None = None):
        super().__init__(id=id)
        self.model = model
        self.clock = clock

    def compose(self) -> ComposeResult:
        yield RecordTable(COLUMNS, self._cells, "No tries yet: `tuici try` tests the work tree.", id="tries-table")

    def on_mount(self) -> None:
        self.border_title = "Tries"

    @property
    def table(self) -> RecordTable:
        return self.query_one(RecordTable)

    @property
    def selected_job(self) -> int | None:
        return self.table.selected_key

    def _cells(self, job_id: int) -> list[Cell]:
        job = self.model.jobs[job_id]
        commit = self.model.commits.get(job.commit)
        badge = job_badge(job)
        return [(short_sha(job.commit), "record-table--muted"), (badge.text, badge.style), (str(job.id), ""),
                (job.branch, ""), (age(job.queued_at, self.clock()), ""), (job_duration(job, self.clock()), ""),
                (test_counts(job), ""), (commit.subject if commit is not None else "", "")]

    def rebuild(self) -> None:
        """Small enough to redo whole whenever a try changes."""
        keys = list(reversed(self.model.tries))
        self.display = bool(keys)
        self.styles.height = min(len(keys), MAX_ROWS) + 3  # the header and the border
        self.table.set_keys(keys)
        self.table.redraw()
        self.border_subtitle = str(len(keys))

"""The queue panel: jobs waiting for a runner, in the order the dispatcher will hand them out."""

from __future__ import annotations

from typing import Callable

from textual.app import ComposeResult
from textual.containers import Vertical

from ..formatting import age, short_sha
from ..model import Model
from .table import Cell, Column, RecordTable

COLUMNS = (
    Column("#", 3, right=True),
    Column("job", 5, right=True),
    Column("commit", 7),
    Column("branch", 8, flex=True),
    Column("waiting", 7, drop=1, right=True),
)


class QueuePanel(Vertical):
    def __init__(self, model: Model, clock: Callable[[], float], *, id: str | None = None):
        super().__init__(id=id)
        self.model = model
        self.clock = clock
        self._position: dict[int, int] = {}

    def compose(self) -> ComposeResult:
        yield RecordTable(COLUMNS, self._cells, "Nothing waiting.", id="queue-table")

    def on_mount(self) -> None:
        self.border_title = "Queue"

    @property
    def table(self) -> RecordTable:
        return self.query_one(RecordTable)

    @property
    def selected_job(self) -> int | None:
        return self.table.selected_key

    def _cells(self, job_id: int) -> list[Cell]:
        job = self.model.jobs[job_id]
        return [(str(self._position[job_id]), "record-table--muted"), (str(job.id), ""), (short_sha(job.commit), ""),
                (job.branch, ""), (age(job.queued_at, self.clock()), "queued")]

    def rebuild(self) -> None:
        """Small enough to redo whole whenever a job changes."""
        keys = [job.id for job in self.model.queue()]
        self._position = {job_id: n for n, job_id in enumerate(keys, 1)}
        self.table.set_keys(keys)
        self.table.redraw()
        self.border_subtitle = f"{len(keys)} waiting"

"""The runners panel: what the dispatcher knows of each runner, and what the supervisor knows of its process.

A runner the supervisor has started but that has not registered yet shows as
``starting``; one being stopped shows as ``stopping``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal

from textual.app import ComposeResult
from textual.containers import Vertical

from ...wire import messages as p
from ..backend import ProcessInfo
from ..formatting import RUNNER_BADGES, age
from ..model import Model
from .table import Cell, Column, RecordTable

COLUMNS = (
    Column("runner", 10, flex=True),
    Column("state", 10),
    Column("job", 5, right=True),
    Column("done", 4, drop=2, right=True),
    Column("beat", 4, drop=3, right=True),
    Column("pid", 7, drop=4, right=True),
    Column("host", 10, drop=5),
)


RunnerRowState = p.RunnerState | Literal["starting", "stopping"]  # the last two: known to the supervisor only


@dataclass(frozen=True)
class RunnerRow:
    name: str
    state: RunnerRowState
    pid: int | None
    host: str = ""
    job: int | None = None
    jobs_done: int = 0
    last_heartbeat: float = 0.0


def runner_rows(model: Model, processes: dict[str, ProcessInfo]) -> dict[str, RunnerRow]:
    """The dispatcher's runners, merged with the runner processes this control center supervises."""
    rows = {
        r.name: RunnerRow(r.name, r.state, r.pid, r.host, r.job, r.jobs_done, r.last_heartbeat)
        for r in model.runners.values()
    }
    for proc in processes.values():
        if proc.kind != "runner":
            continue
        known = rows.get(proc.name)
        if proc.state == "stopping":
            rows[proc.name] = RunnerRow(proc.name, "stopping", proc.pid, *_rest(known))
        elif known is None and proc.pid is not None:
            rows[proc.name] = RunnerRow(proc.name, "starting", proc.pid)
    return rows


def _rest(row: RunnerRow | None) -> tuple:
    return () if row is None else (row.host, row.job, row.jobs_done, row.last_heartbeat)


def _natural(name: str) -> list:
    """``runner-2`` before ``runner-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class RunnersPanel(Vertical):
    def __init__(self, model: Model, processes: Callable[[], dict[str, ProcessInfo]], clock: Callable[[], float],
                 *, id: str | None = None):
        super().__init__(id=id)
        self.model = model
        self.processes = processes
        self.clock = clock
        self.rows: dict[str, RunnerRow] = {}

    def compose(self) -> ComposeResult:
        yield RecordTable(COLUMNS, self._cells, "No runners: press a to start one.", id="runners-table")

    def on_mount(self) -> None:
        self.border_title = "Runners"

    @property
    def table(self) -> RecordTable:
        return self.query_one(RecordTable)

    @property
    def selected(self) -> RunnerRow | None:
        name = self.table.selected_key
        return None if name is None else self.rows.get(name)

    def _cells(self, name: str) -> list[Cell]:
        row = self.rows[name]
        badge = RUNNER_BADGES.get(row.state, RUNNER_BADGES["lost"])
        return [
            (row.name, ""), (badge.text, badge.style), (f"{row.job}" if row.job else "", ""), (str(row.jobs_done), ""),
            # a runner heartbeats only while it holds a job: an idle one's last beat says nothing
            (age(row.last_heartbeat, self.clock()) if row.state == "busy" else "", ""),
            (str(row.pid or ""), "record-table--muted"),
            (row.host, "record-table--muted"),
        ]

    def rebuild(self) -> None:
        """Small enough to redo whole; also called every second, as processes start and stop unannounced."""
        rows = runner_rows(self.model, self.processes())
        changed = rows != self.rows
        self.rows = rows
        if changed:
            self.table.set_keys(sorted(rows, key=_natural))
            counts = [sum(1 for r in rows.values() if r.state == state) for state in ("busy", "idle", "lost")]
            lost = f" · {counts[2]} lost" if counts[2] else ""
            self.border_subtitle = f"{counts[0]} busy · {counts[1]} idle{lost}"
        self.table.redraw()

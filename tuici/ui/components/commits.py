"""The commits panel: every branch commit, newest first, with the state of its latest job; ``/`` filters it. The
first failing commit a bisection found says so before its subject."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Input

from ..formatting import FIRST_BAD, LOADING, age, commit_badge, job_duration, short_sha, test_counts
from ..model import Changes, Model
from .inputs import ClearableInput
from .table import Cell, Column, RecordTable

COLUMNS = (
    Column("commit", 7),
    Column("status", 11),
    Column("branch", 12, drop=2),
    Column("author", 12, drop=5),
    Column("age", 4, drop=4, right=True),
    Column("time", 6, drop=3, right=True),
    Column("tests", 11, drop=6),
    Column("subject", 10, flex=True),
)


@dataclass(frozen=True)
class CommitFilter:
    """``branch:NAME``, ``author:NAME`` and plain words; a commit must match every one (any case)."""

    branch: tuple[str, ...] = ()
    author: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "CommitFilter":
        branch: list[str] = []
        author: list[str] = []
        words: list[str] = []
        for term in text.lower().split():
            field, colon, value = term.partition(":")
            if colon and field in ("branch", "author") and value:
                (branch if field == "branch" else author).append(value)
            else:
                words.append(term)
        return cls(tuple(branch), tuple(author), tuple(words))

    def __bool__(self) -> bool:
        return bool(self.branch or self.author or self.words)

    def matches(self, sha: str, branch: str, author: str, subject: str) -> bool:
        branch, author = branch.lower(), author.lower()
        text = f"{sha}\n{branch}\n{author}\n{subject.lower()}"
        return (all(b in branch for b in self.branch) and all(a in author for a in self.author)
                and all(w in text for w in self.words))


class CommitsPanel(Vertical):
    def __init__(self, model: Model, clock: Callable[[], float], repo_name: str, *, id: str | None = None):
        super().__init__(id=id)
        self.model = model
        self.clock = clock
        self.repo_name = repo_name
        self.filter = CommitFilter()

    def compose(self) -> ComposeResult:
        yield RecordTable(COLUMNS, self._cells, "No commits yet: commit to a watched branch.", id="commits-table")
        yield ClearableInput(placeholder="text, branch:NAME, author:NAME (Enter keeps it, Escape clears)",
                          id="commits-filter")

    def on_mount(self) -> None:
        self._update_title()

    @property
    def table(self) -> RecordTable:
        return self.query_one(RecordTable)

    @property
    def selected_sha(self) -> str | None:
        return self.table.selected_key

    def _cells(self, sha: str) -> list[Cell]:
        commit = self.model.commits[sha]
        job = self.model.job_for_commit(sha)
        badge = commit_badge(commit, job)
        now = self.clock()
        subject = (f"{FIRST_BAD.text} · {commit.subject}", FIRST_BAD.style) if sha in self.model.first_bad \
            else (commit.subject, "")
        return [
            (short_sha(sha), "record-table--muted"), (badge.text, badge.style), (commit.branch, ""),
            (commit.author, ""), (age(commit.time, now), ""), (job_duration(job, now), ""), (test_counts(job), ""),
            subject,
        ]

    def apply(self, changes: Changes) -> None:
        if changes.commits_added or changes.reset:
            self._rebuild()
        elif changes.commits:
            self.table.mark_changed(list(changes.commits))

    def _rebuild(self) -> None:
        commits = self.model.commits
        newest_first = reversed(self.model.arrival)
        if self.filter:
            match = self.filter.matches
            keys = [sha for sha in newest_first
                    if match(sha, commits[sha].branch, commits[sha].author, commits[sha].subject)]
        else:
            keys = list(newest_first)
        self.table.set_keys(keys)
        self._update_title()

    def _update_title(self) -> None:
        shown, total = len(self.table.keys), len(self.model.arrival)
        query = self.query_one(ClearableInput).value.strip()
        self.border_title = Content.assemble("Commits · ", (self.repo_name, "italic"))
        if self.model.partial:
            self.border_subtitle = LOADING
        else:
            self.border_subtitle = Content.assemble(f"filter “{query}”: {shown} of {total}") if query else f"{total}"

    # ------------------------------------------------------------------ filtering

    def open_filter(self) -> None:
        box = self.query_one(ClearableInput)
        box.display = True
        box.focus()

    @on(Input.Changed, "#commits-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter = CommitFilter.parse(event.value)
        self._rebuild()

    @on(Input.Submitted, "#commits-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.input.display = bool(event.value.strip())
        self.table.focus()

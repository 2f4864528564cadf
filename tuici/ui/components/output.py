"""The output panel: one job's log, live while it runs, from the file on disk.

``LogView`` is a Line-API widget in the manner of toolong: it draws only the lines on
screen, reading their block of the file through a ``LogIndex`` on a thread of its own,
so a log of a million lines opens at once and memory stays bounded however much a job
prints. Following is on while the view is at the bottom and off once the user scrolls up.
``/`` searches it: matches are highlighted in the lines drawn (only those on screen), and
the next or previous matching line is found by the index, on its thread.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.cells import cell_len
from rich.segment import Segment
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.cache import LRUCache
from textual.containers import Vertical
from textual.content import Content
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input

from ... import wire as p
from ..actions import bindings_for
from ..formatting import job_badge, short_sha
from ..logindex import STRIDE, IndexState, LogIndex, Match
from .inputs import ClearableInput

POLL_INTERVAL = 0.1  # how often a live log is checked for more output
CACHED_BLOCKS = 32  # blocks of STRIDE lines kept in memory: dozens of screens; more costs memory and GC time


@dataclass
class _Block:
    lines: list[Text]
    strips: dict[tuple, Strip] = field(default_factory=dict)


class LogView(ScrollView, can_focus=True):
    BINDINGS = bindings_for("log")
    COMPONENT_CLASSES = {"log-view--placeholder", "log-view--match", "log-view--current-match"}
    DEFAULT_CSS = """
    LogView {
        scrollbar-size-vertical: 1;
        & > .log-view--placeholder { color: $text-muted; text-style: italic; }
        & > .log-view--match { background: $warning-muted; color: $foreground; }
        & > .log-view--current-match { background: $warning; color: $background; text-style: bold; }
    }
    """

    follow: reactive[bool] = reactive(True)

    class SearchRequested(Message):
        """``/`` was pressed: the panel asks what to search for."""

    class SearchMoved(Message):
        """A search (n, N, Enter) ended: on ``match``, or nothing matched."""

        def __init__(self, match: Match | None):
            super().__init__()
            self.match = match

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.placeholder = "Select a commit or job and press Enter to see its output."
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuici-log")
        self._index: LogIndex | None = None
        self._state = IndexState()
        self._epoch = 0  # bumped whenever what is on disk moved on: reads started before are stale
        self._blocks: LRUCache[int, _Block] = LRUCache(CACHED_BLOCKS)
        self._loading: set[int] = set()
        self._scanning = False
        self._scan_again = False
        self._live = False
        self._width = 0
        self._auto_scrolling = False
        self._target: int | None = None  # a line to show at the top once the index reaches it
        self.search = ""  # the text searched for ("" for none): lower case matches any case
        self.match: Match | None = None  # the line the last search went to
        self._finding = False

    def on_mount(self) -> None:
        self.set_interval(POLL_INTERVAL, self._poll)
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._forget_drawn_lines())

    def on_unmount(self) -> None:
        if self._index is not None:
            self._executor.submit(self._index.close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ what is shown

    @property
    def path(self) -> Path | None:
        return None if self._index is None else self._index.path

    @property
    def line_count(self) -> int:
        return self._state.lines

    @property
    def settled(self) -> bool:
        """Nothing is being indexed, read or searched right now (tests wait for this before a screenshot)."""
        return not (self._scanning or self._loading or self._finding)

    def open(self, path: Path, live: bool) -> None:
        """Show the log at ``path`` from its end, following it while ``live``."""
        if self._index is not None:
            self._executor.submit(self._index.close)
        self._index = LogIndex(path)
        self._live = live
        self._target = None
        self._width = 0
        self.match = None
        self._apply(IndexState())
        self.follow = True
        self.refresh()
        self._scan()

    def set_live(self, live: bool) -> None:
        """The job ended (or started again): after its last output, stop checking for more."""
        self._live = live
        self._scan()

    def _poll(self) -> None:
        if self._index is not None and (self._live or not self._state.exists):
            self._scan()

    def _scan(self) -> None:
        if self._index is None:
            return
        if self._scanning:
            self._scan_again = True
            return
        self._scanning = True
        self.run_worker(self._scan_worker(), group="log-scan")

    async def _scan_worker(self) -> None:
        loop = asyncio.get_running_loop()
        index = self._index
        try:
            while index is not None:
                self._scan_again = False
                state, more = await loop.run_in_executor(self._executor, index.scan)
                if index is self._index:
                    self._apply(state)
                    if not (more or self._scan_again):
                        break
                index = self._index
        except OSError as exc:
            self.notify(f"Cannot read {self._index.path if self._index else 'the log'}: {exc}", severity="error",
                        markup=False)
        finally:
            self._scanning = False

    def _apply(self, state: IndexState) -> None:
        old, self._state = self._state, state
        if state == old:
            return
        self._epoch += 1
        if state.generation != old.generation or state.lines < old.lines:
            self._blocks.clear()
        else:
            for block in range(max(0, old.lines - 1) // STRIDE, state.lines // STRIDE + 1):
                self._blocks.discard(block)  # the block that held the last line has grown
        self._resize(Size(self._width, state.lines))
        if self._target is not None:
            self._reach_target()
        elif self.follow:
            self._scroll_to_end()
        self.refresh()

    def go_to_line(self, line: int) -> None:
        """Show ``line`` at the top, and stop following; as soon as the log is indexed that far."""
        self._target = line
        self.follow = False
        self._reach_target()

    def _reach_target(self) -> None:
        if self._target is None or self._target >= self._state.lines:
            return
        self._auto_scrolling = True  # the user did not scroll: following stays as it was set
        try:
            self.scroll_to(y=self._target, animate=False, force=True)
        finally:
            self._auto_scrolling = False
        self._target = None

    def _resize(self, size: Size) -> None:
        """Set the virtual size without laying out the whole screen again, as assigning it would: a log
        growing ten times a second under a scrollbar already shown only moves the thumb. Should a
        scrollbar appear or go, its own reactive asks for the layout. (Textual's own resizing without
        layout does the same.)"""
        self.set_reactive(LogView.virtual_size, size)
        self._scroll_update(size)

    def _forget_drawn_lines(self) -> None:
        for number in list(self._blocks.keys()):
            block = self._blocks.get(number)
            if block is not None:
                block.strips.clear()
        self.refresh()

    # ------------------------------------------------------------------ following

    def _scroll_to_end(self) -> None:
        self._auto_scrolling = True
        try:
            self.scroll_to(y=self.max_scroll_y, animate=False, force=True)  # before layout has seen the new size
        finally:
            self._auto_scrolling = False

    def watch_show_vertical_scrollbar(self, shown: bool) -> None:
        """A scrollbar that layout has only just shown missed the scroll: put its thumb where the view is."""
        if shown:
            self.vertical_scrollbar.position = self.scroll_y

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self._auto_scrolling:
            return
        if new_value < old_value:
            self.follow = False
        elif new_value >= self.max_scroll_y:
            self.follow = True

    def action_follow(self) -> None:
        self._target = None
        self.follow = True
        self._scroll_to_end()

    # ------------------------------------------------------------------ searching

    def action_search(self) -> None:
        self.post_message(self.SearchRequested())

    def action_next_match(self) -> None:
        self.find(forward=True)

    def action_previous_match(self) -> None:
        self.find(forward=False)

    def set_search(self, text: str) -> None:
        """Highlight ``text`` from now on (none for ""); the next ``find`` starts from the view."""
        if text != self.search:
            self.search = text
            self.match = None
            self._forget_drawn_lines()

    def find(self, forward: bool) -> None:
        """Go to the next (or previous) line that matches, after the last match or else from the view."""
        if not self.search:
            self.notify("Nothing to search for: press / and type.", severity="warning")
            return
        if self._index is None or self._finding:
            return
        if self.match is not None:
            start = self.match.line
        else:  # the first match at or below the top of the view (at or above its bottom, backwards)
            start = int(self.scroll_y) - 1 if forward else int(self.scroll_y) + self.scrollable_content_region.height
        self._finding = True
        self.run_worker(self._find(self._index, self.search, start, forward), group="log-find")

    async def _find(self, index: LogIndex, needle: str, start: int, forward: bool) -> None:
        try:
            found = await asyncio.get_running_loop().run_in_executor(self._executor, index.find, needle, start,
                                                                     forward)
        except OSError as exc:
            self.notify(f"Cannot search {index.path}: {exc}", severity="error", markup=False)
            return
        finally:
            self._finding = False
        if index is not self._index or needle != self.search:
            return  # another log, or another search, meanwhile
        self.match = found
        if found is not None:
            if found.column + cell_len(needle) > self._width:  # its line may not be read yet: room to scroll to it
                self._width = found.column + cell_len(needle)
                self._resize(Size(self._width, self._state.lines))
            width = self.scrollable_content_region.width
            x = self.scroll_x if self.scroll_x <= found.column < self.scroll_x + width else found.column - width // 3
            self.scroll_to(x=max(0, x), y=max(0, found.line - self.scrollable_content_region.height // 2),
                           animate=False, force=True)
        self.post_message(self.SearchMoved(found))
        self.refresh()

    def _highlighted(self, line: Text, current: bool) -> Text:
        """``line`` with every match of the search marked (in the current match's style on its line)."""
        fold = self.search == self.search.lower()
        key = self.search.lower() if fold else self.search
        plain = line.plain.lower() if fold else line.plain
        at = plain.find(key)
        if at < 0:
            return line
        style = self.get_component_rich_style("log-view--current-match" if current else "log-view--match")
        line = line.copy()
        while at >= 0:
            line.stylize(style, at, at + len(key))
            at = plain.find(key, at + len(key))
        return line

    # ------------------------------------------------------------------ drawing

    def _load(self, block: int) -> None:
        if block not in self._loading:
            self._loading.add(block)
            self.run_worker(self._read(block), group="log-read")

    async def _read(self, block: int) -> None:
        index, epoch = self._index, self._epoch
        if index is None:
            self._loading.discard(block)
            return
        try:
            lines = await asyncio.get_running_loop().run_in_executor(self._executor, index.read_block, block)
        except OSError as exc:
            lines = [Text(f"(cannot read this part of the log: {exc})")]
        finally:
            self._loading.discard(block)
        if index is not self._index:
            return
        if epoch == self._epoch:
            self._blocks[block] = _Block(lines)
            widest = max((line.cell_len for line in lines), default=0)
            if widest > self._width:
                self._width = widest
                self._resize(Size(widest, self._state.lines))
        self.refresh()  # a stale read is dropped: the refresh asks for the block again

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        number = int(self.scroll_y) + y
        if not self._state.lines:
            if y == 0:
                style = base + self.get_component_rich_style("log-view--placeholder")
                return Strip([Segment(self.placeholder, style)]).crop_extend(0, width, base)
            return Strip.blank(width, base)
        if number >= self._state.lines:
            return Strip.blank(width, base)
        block_number, row = divmod(number, STRIDE)
        block = self._blocks.get(block_number)
        if block is None or row >= len(block.lines):
            self._load(block_number)
            return Strip.blank(width, base)
        x = int(self.scroll_x)
        current = self.match is not None and self.match.line == number
        key = (row, x, width, current)
        strip = block.strips.get(key)
        if strip is None:
            line = self._highlighted(block.lines[row], current) if self.search else block.lines[row]
            segments = Segment.apply_style(line.render(self.app.console), base)
            strip = block.strips[key] = Strip(segments, line.cell_len).crop_extend(x, x + width, base)
        return strip


class OutputPanel(Vertical):
    """The log of one job, titled with the job, its commit and its state."""

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.job: p.JobInfo | None = None

    def compose(self) -> ComposeResult:
        yield LogView(id="log")
        yield ClearableInput(placeholder="search the output (Enter: the first match below; n, N: next, previous; "
                                         "Escape clears)", id="log-search")

    def on_mount(self) -> None:
        self.border_title = "Output"

    @property
    def view(self) -> LogView:
        return self.query_one(LogView)

    # ------------------------------------------------------------------ searching

    @on(LogView.SearchRequested)
    def _open_search(self) -> None:
        box = self.query_one("#log-search", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#log-search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.view.set_search(event.value)
        self.border_subtitle = ""

    @on(Input.Submitted, "#log-search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        event.input.display = False
        self.view.focus()
        if event.value:
            self.view.find(forward=True)

    @on(LogView.SearchMoved)
    def _search_moved(self, event: LogView.SearchMoved) -> None:
        query = self.view.search
        if event.match is None:
            self.border_subtitle = Content.assemble(f"“{query}” ", ("not found", "$text-warning"))
        else:
            wrapped = " · wrapped around" if event.match.wrapped else ""
            self.border_subtitle = f"“{query}” · line {event.match.line + 1:,} of {self.view.line_count:,}{wrapped}"

    def show_job(self, job: p.JobInfo, path: Path) -> None:
        self.job = job
        self.view.placeholder = self._waiting_text(job)
        self.view.open(path, live=job.state not in p.FINAL_STATES)
        self._update_title()

    def update_job(self, job: p.JobInfo) -> None:
        """The shown job changed: a new attempt starts a new log; a finished one stops being followed."""
        old, self.job = self.job, job
        self.view.placeholder = self._waiting_text(job)
        if old is not None and job.attempts != old.attempts and self.view.path is not None:
            self.view.open(self.view.path, live=True)
        else:
            self.view.set_live(job.state not in p.FINAL_STATES)
        self._update_title()

    @staticmethod
    def _waiting_text(job: p.JobInfo) -> str:
        if job.state == "queued":
            return f"Job {job.id} is queued: its output shows here as soon as it starts."
        if job.log_deleted:
            return f"Job {job.id}'s output was deleted by retention (keep_days, keep_bytes in .git/tuici/config.toml)."
        if job.state in p.FINAL_STATES:
            return f"Job {job.id} printed nothing."
        return f"Job {job.id} has printed nothing yet."

    def _update_title(self) -> None:
        job = self.job
        if job is None:
            return
        badge = job_badge(job)
        env = f" · env {job.env}{' reused' if job.env_reused else ''}" if job.env else ""
        self.border_title = Content.assemble(
            "Output · ", f"job {job.id} · ", short_sha(job.commit), " ", job.branch, " · ",
            (badge.text, f"${badge.style}"), env,
        )

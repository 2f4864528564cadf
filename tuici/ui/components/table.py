"""A table that draws only the rows on screen, for thousands of rows that change often.

Textual's DataTable stores and measures every cell: with 10,000 commits it takes seconds
to open and a tenth of a second per changed cell. This table holds only the row keys in
display order; a row's cells are asked for when the row comes into view, and its drawn
line is cached until the row is marked changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Sequence, TypeVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.cache import LRUCache
from textual.color import Color
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..actions import bindings_for

Cell = tuple[str, str]  # text (already safe to show), and the theme variable that colours it ("" for none)


@dataclass(frozen=True)
class Column:
    label: str
    width: int  # cells; for the flexible column, its minimum
    flex: bool = False  # takes the width left over
    drop: int = 0  # in a narrow table the highest goes first; 0 never goes
    right: bool = False  # right-aligned (numbers)
    keep_end: bool = False  # a text too long loses its start, not its end (a test's id: its name is last)


K = TypeVar("K", bound=Hashable)  # what a row stands for: a commit's sha, a job's id, a runner's name


class RecordTable(ScrollView, Generic[K], can_focus=True):
    BINDINGS = bindings_for("table")
    COMPONENT_CLASSES = {"record-table--header", "record-table--cursor", "record-table--marker", "record-table--muted"}
    DEFAULT_CSS = """
    RecordTable {
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
        & > .record-table--header { text-style: bold; color: $text-muted; }
        & > .record-table--cursor { background: $primary 15%; }
        &:focus > .record-table--cursor { background: $primary 35%; text-style: bold; }
        & > .record-table--marker { color: $accent; }
        & > .record-table--muted { color: $text-muted; }
    }
    """

    def __init__(self, columns: Sequence[Column], cells: Callable[[K], Sequence[Cell]], empty: str,
                 *, id: str | None = None):
        super().__init__(id=id)
        self.columns = tuple(columns)
        self.cells = cells
        self.empty = empty
        self.keys: list[K] = []
        self.cursor_row = 0
        self._versions: dict[K, int] = {}
        self._lines: LRUCache[tuple, Strip] = LRUCache(1024)
        self._styles: dict[str, Style] = {}

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.redraw())

    # ------------------------------------------------------------------ data

    @property
    def selected_key(self) -> K | None:
        return self.keys[self.cursor_row] if self.keys else None

    def set_keys(self, keys: Sequence[K]) -> None:
        """Show these rows in this order; the cursor stays on its row if that row is still shown.

        A cursor on the first row stays on the first row: with newest-first tables, that
        keeps following the newest.
        """
        selected = self.selected_key
        self.keys = list(keys)
        if self.cursor_row == 0 or selected is None:
            self.cursor_row = 0
        elif selected in keys:
            self.cursor_row = keys.index(selected)
        else:
            self.cursor_row = min(self.cursor_row, max(0, len(keys) - 1))
        self.virtual_size = Size(0, len(keys) + 1)
        self.refresh()

    def mark_changed(self, keys: Sequence[K]) -> None:
        """These rows' contents changed: draw them again when next shown."""
        for key in keys:
            self._versions[key] = self._versions.get(key, 0) + 1
        self.refresh()

    def redraw(self) -> None:
        """Draw every row again (ages moved on, or the theme changed): no drawn line is any use now."""
        self._lines.clear()
        self._styles.clear()
        self.refresh()

    # ------------------------------------------------------------------ cursor

    def move_cursor(self, row: int) -> None:
        if not self.keys:
            return
        self.cursor_row = max(0, min(row, len(self.keys) - 1))
        rows_shown = max(1, self.scrollable_content_region.height - 1)
        top = int(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, force=True)
        elif self.cursor_row >= top + rows_shown:
            self.scroll_to(y=self.cursor_row - rows_shown + 1, animate=False, force=True)
        self.refresh()

    def select_key(self, key: K) -> None:
        if key in self.keys:
            self.move_cursor(self.keys.index(key))

    def action_cursor_down(self) -> None:
        self.move_cursor(self.cursor_row + 1)

    def action_cursor_up(self) -> None:
        self.move_cursor(self.cursor_row - 1)

    def action_cursor_page_down(self) -> None:
        self.move_cursor(self.cursor_row + max(1, self.scrollable_content_region.height - 2))

    def action_cursor_page_up(self) -> None:
        self.move_cursor(self.cursor_row - max(1, self.scrollable_content_region.height - 2))

    def action_cursor_first(self) -> None:
        self.move_cursor(0)

    def action_cursor_last(self) -> None:
        self.move_cursor(len(self.keys) - 1)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is not None and offset.y >= 1:
            self.move_cursor(int(self.scroll_y) + offset.y - 1)

    def on_focus(self) -> None:
        self._styles.clear()  # the cursor looks different in a focused table
        self.refresh()

    def on_blur(self) -> None:
        self._styles.clear()
        self.refresh()

    # ------------------------------------------------------------------ drawing

    def _style(self, name: str) -> Style:
        """The Rich style for a theme variable, or for one of this widget's component classes."""
        style = self._styles.get(name)
        if style is None:
            if name.startswith("record-table--"):
                style = self.get_component_rich_style(name)
                if name not in ("record-table--cursor", "record-table--header"):
                    style = Style(color=style.color)  # only colours text, over the cursor's background too
            elif name:
                value = self.app.theme_variables.get(name)
                style = Style(color=Color.parse(value).rich_color) if value else Style()
            else:
                style = Style()
            self._styles[name] = style
        return style

    def _layout(self, width: int) -> list[tuple[int, int]]:
        """(column index, width) of the columns that fit, the flexible one taking what is left."""
        shown = list(range(len(self.columns)))

        def needed() -> int:
            return sum(self.columns[i].width + 1 for i in shown)

        while needed() > width and any(self.columns[i].drop for i in shown):
            shown.remove(max(shown, key=lambda i: self.columns[i].drop))
        spare = max(0, width - needed())
        return [(i, self.columns[i].width + (spare if self.columns[i].flex else 0)) for i in shown]

    def _draw(self, cells: Sequence[Cell], layout: list[tuple[int, int]], width: int, base: Style,
              marker: bool = False) -> Strip:
        """One row; the selected one starts with a marker, so the cursor is seen without colour too."""
        segments = []
        for index, column_width in layout:
            text, style_name = cells[index]
            if marker:
                segments.append(Segment("▌", base + self._style("record-table--marker")))
                marker = False
            else:
                segments.append(Segment(" ", base))
            column = self.columns[index]
            fitted = _fit(text, column_width, column.right, column.keep_end)
            segments.append(Segment(fitted, base + self._style(style_name)))
        return Strip(segments).adjust_cell_length(width, base)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        layout = self._layout(width)
        if y == 0:
            header = base + self._style("record-table--header")
            return self._draw([(c.label, "") for c in self.columns], layout, width, header)
        row = int(self.scroll_y) + y - 1
        if row >= len(self.keys):
            if not self.keys and y == 1:
                muted = base + self._style("record-table--muted")
                return Strip([Segment(" " + self.empty, muted)]).adjust_cell_length(width, base)
            return Strip.blank(width, base)
        key = self.keys[row]
        selected = row == self.cursor_row
        cache_key = (key, self._versions.get(key, 0), width, selected, self.has_focus)
        line = self._lines.get(cache_key)
        if line is None:
            style = base + self._style("record-table--cursor") if selected else base
            line = self._lines[cache_key] = self._draw(self.cells(key), layout, width, style, marker=selected)
        return line


def _fit(text: str, width: int, right: bool, keep_end: bool = False) -> str:
    """``text`` in exactly ``width`` cells: cut with an ellipsis (at its end, or at its start), or padded."""
    length = cell_len(text)
    if length > width:
        if keep_end and width > 1:
            tail = text[-(width - 1):]
            while cell_len(tail) > width - 1:
                tail = tail[1:]
            return set_cell_size("…" + tail, width)
        return set_cell_size(text, width - 1) + "…" if width > 1 else set_cell_size(text, width)
    padding = " " * (width - length)
    return padding + text if right else text + padding

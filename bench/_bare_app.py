"""The physical limit of the control-center rows: a bare Textual app (``python -m bench._bare_app``),
started and driven on a pty exactly as the control center is.

One focused widget of lines drawn through the Line API, as tuici's tables are; ``j``/``k``
move the marked line, ``q`` quits. What it costs is what any Textual app costs.
"""

from __future__ import annotations

from rich.segment import Segment
from textual.app import App, ComposeResult
from textual.strip import Strip
from textual.widget import Widget

MARKER = "▌"
READY = "bare textual app"


class Lines(Widget, can_focus=True):
    BINDINGS = [("j", "move(1)"), ("k", "move(-1)")]

    def __init__(self) -> None:
        super().__init__()
        self.row = 0

    def action_move(self, step: int) -> None:
        self.row = max(0, self.row + step)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        text = f"{MARKER if y == self.row else ' '} {READY}: line {y}"
        return Strip([Segment(text)]).adjust_cell_length(self.size.width)


class BareApp(App[None]):
    BINDINGS = [("q", "quit")]

    def compose(self) -> ComposeResult:
        yield Lines()

    def on_mount(self) -> None:
        self.query_one(Lines).focus()


if __name__ == "__main__":
    BareApp().run()

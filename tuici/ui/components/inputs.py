"""A one-line input that Escape empties (and submits empty): the commits and tests filters, the output search."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input


class ClearableInput(Input):
    BINDINGS = [Binding("escape", "clear", "Clear", show=False)]

    def action_clear(self) -> None:
        self.value = ""
        self.post_message(self.Submitted(self, self.value))

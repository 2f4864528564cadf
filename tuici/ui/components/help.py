"""The help screen: every key, listed from the actions registry, grouped by where it works, as the keymap in
the settings file binds it, with the id that rebinds it."""

from __future__ import annotations

from itertools import groupby

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from ..actions import ACTIONS, SCOPES
from ..settings import settings_file


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", show=False)]

    def __init__(self, keymap: dict[str, str] | None = None):
        super().__init__()
        self.keymap = keymap or {}

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog", classes="dialog"):
            with VerticalScroll():
                for scope, actions in groupby(sorted(ACTIONS, key=lambda a: list(SCOPES).index(a.scope)),
                                              key=lambda a: a.scope):
                    yield Static(SCOPES[scope], classes="help-heading")
                    for action in actions:
                        with Horizontal(classes="help-row"):
                            yield Static(Content(action.key_label(self.keymap.get(action.id))), classes="help-key")
                            yield Static(Content(action.help), classes="help-text")
                            yield Static(Content(action.id), classes="help-id")
                yield Static(Content(f"Rebind a key by its id in {settings_file()}, under [keymap]: for example "
                                     'rerun = "R" or search-output = "ctrl+f,slash".'), classes="help-keymap")
            yield Static("Escape, ? or q closes this.", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#help-dialog").border_title = "Keys"

"""Every key the control center answers, in one list.

The bindings, the footer, the help screen and the command palette all read it, so a
key can never be bound without being documented, or documented without being bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType

SCOPES = {
    "app": "Anywhere",
    "table": "In a table (commits, queue, runners, tests)",
    "log": "In the output",
    "screen": "Moving around",
}


@dataclass(frozen=True)
class Action:
    id: str  # stable binding id: a keymap may rebind it
    keys: str  # Textual key names, comma separated
    action: str  # the action method, on the app or on the widget of its scope
    description: str  # a word, for the footer
    help: str  # a sentence, for the help screen and the command palette
    scope: str = "app"
    show: bool = True  # in the footer
    key_display: str | None = None
    title: str = ""  # the command palette's name for it, when the footer's word is too short

    @property
    def palette_title(self) -> str:
        return self.title or self.description

    def key_label(self, keys: str | None = None) -> str:
        """The keys (``keys`` if a keymap rebinds them) as the help screen shows them."""
        names = {"slash": "/", "question_mark": "?", "shift+tab": "shift+tab", "pageup": "PgUp",
                 "pagedown": "PgDn"}
        return " / ".join(names.get(key, key) for key in (keys or self.keys).split(","))


ACTIONS: tuple[Action, ...] = (
    Action("add-runner", "a", "add_runner", "Add", "Start one more runner process.", title="Add runner"),
    Action("kill-runner", "x", "kill_runner", "Kill", "Stop the selected runner, after you confirm.",
           title="Kill runner"),
    Action("kill-runner-now", "X", "kill_runner_now", "Kill now",
           "Kill the selected runner at once (SIGKILL), without asking.",
           show=False, title="Kill runner now"),
    Action("rerun", "r", "rerun", "Rerun", "Test the selected commit again, at the front of the queue."),
    Action("cancel", "c", "cancel_job", "Cancel", "Cancel the selected job, queued or running."),
    Action("show-output", "enter", "show_output", "Output", "Show the selected job's output.", title="Show output"),
    Action("tests", "t", "toggle_tests", "Tests",
           "Show the selected job's test cases beside its output, failures first (t again hides them); Enter on "
           "one shows its failure in the output.", title="Show tests"),
    Action("follow", "f", "follow", "Follow", "Follow the output as it arrives (End in the output also does).",
           title="Follow output"),
    Action("filter", "slash", "filter", "Filter",
           "Filter commits by text; branch:NAME and author:NAME narrow to one field. In the tests, filter them by "
           "name or outcome. Escape clears it.", key_display="/", title="Filter commits"),
    Action("help", "question_mark", "help", "Help", "List every key.", key_display="?"),
    Action("quit", "q", "quit", "Quit",
           "Quit, stopping every process this control center started (it asks first if jobs are running)."),
    # Last in the footer, which a narrow terminal cuts: Help and Quit stay in sight.
    Action("copy-sha", "y", "copy_sha", "Copy sha", "Copy the selected commit's full sha to the clipboard.",
           title="Copy commit sha"),
    Action("open-pager", "o", "open_pager", "Pager",
           "Open the selected job's output in $PAGER (default less -R); quitting it comes back here.",
           title="Open output in pager"),
    # t is kept for the Tests view.
    Action("next-panel", "tab", "app.focus_next", "Next panel", "Move to the next panel.", scope="screen"),
    Action("previous-panel", "shift+tab", "app.focus_previous", "Previous panel", "Move to the previous panel.",
           scope="screen"),
    Action("palette", "ctrl+p", "command_palette", "Commands",
           "Open the command palette: every action, and the theme switch.", scope="screen"),
    Action("cursor-down", "j,down", "cursor_down", "Down", "Move down a row.", scope="table", show=False),
    Action("cursor-up", "k,up", "cursor_up", "Up", "Move up a row.", scope="table", show=False),
    Action("cursor-page-down", "pagedown", "cursor_page_down", "Page down", "Move down a page.", scope="table",
           show=False),
    Action("cursor-page-up", "pageup", "cursor_page_up", "Page up", "Move up a page.", scope="table", show=False),
    Action("cursor-first", "home,g", "cursor_first", "First", "Go to the first row.", scope="table", show=False),
    Action("cursor-last", "end,G", "cursor_last", "Last", "Go to the last row.", scope="table", show=False),
    Action("scroll-down", "j,down", "scroll_down", "Down", "Scroll down a line.", scope="log", show=False),
    Action("scroll-up", "k,up", "scroll_up", "Up", "Scroll up a line (this pauses following).", scope="log",
           show=False),
    Action("scroll-left", "h,left", "scroll_left", "Left", "Scroll left.", scope="log", show=False),
    Action("scroll-right", "l,right", "scroll_right", "Right", "Scroll right.", scope="log", show=False),
    Action("log-page-down", "pagedown,space", "page_down", "Page down", "Scroll down a page.", scope="log",
           show=False),
    Action("log-page-up", "pageup", "page_up", "Page up", "Scroll up a page.", scope="log", show=False),
    Action("log-top", "home,g", "scroll_top", "Top", "Go to the first line.", scope="log", show=False),
    Action("log-end", "end,G", "follow", "End", "Go to the last line and follow.", scope="log", show=False),
    Action("search-output", "slash", "search", "Search",
           "Search the output: matches are highlighted, Enter goes to the first below (lower case matches any "
           "case). Escape clears it.", scope="log", key_display="/"),
    Action("next-match", "n", "next_match", "Next match", "Go to the next line that matches the search.",
           scope="log", show=False),
    Action("previous-match", "N", "previous_match", "Previous match",
           "Go to the previous line that matches the search.", scope="log", show=False),
)


def bindings_for(scope: str) -> list[BindingType]:
    """The bindings of one scope; the ``screen`` scope only documents Textual's own."""
    return [
        Binding(a.keys, a.action, a.description, show=a.show, id=a.id, key_display=a.key_display,
                tooltip=a.help)
        for a in ACTIONS if a.scope == scope
    ]


def palette_actions() -> list[Action]:
    """The actions the command palette offers: those that act on the app."""
    return [a for a in ACTIONS if a.scope == "app"]

"""The status bar: process health, the connection (and with a shared store, the active dispatcher), job counts,
the latest bisection's news, and whether the output is followed.

It shortens itself to fit: first the process names, then the active dispatcher and the words of the counts (their
glyphs stay, so the meaning never rests on colour alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.content import Content
from textual.widget import Widget

from ... import wire as p
from ..formatting import BISECTING, FIRST_BAD, HEALTH_BADGES, JOB_BADGES, LOADING, short_sha

COUNTED = ("queued", "running", "passed", "failed")


@dataclass(frozen=True)
class StatusInfo:
    health: tuple[tuple[str, str], ...] = (("dispatcher", "starting"), ("observer", "starting"))
    connection: str = "connecting"
    counts: dict[str, int] | None = field(default_factory=dict)  # None while the history is still loading
    following: bool = True
    bisection: p.BisectionInfo | None = None  # the latest one to tell of: running, or found
    note: str = ""  # e.g. "stopping…"
    dispatcher: str = ""  # with a shared store: the active dispatcher's address


SHORT_NAMES = {"dispatcher": "disp", "observer": "obs"}


class StatusBar(Widget):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $foreground; }
    """

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.info = StatusInfo()

    def show(self, info: StatusInfo) -> None:
        if info != self.info:
            self.info = info
            self.refresh()

    def render(self) -> Content:
        width = self.size.width
        for short_names, short_counts in ((False, False), (True, False), (True, True)):
            line = self._line(short_names, short_counts)
            if line.cell_length <= width:
                return line
        return line

    def _line(self, short_names: bool, short_counts: bool) -> Content:
        info = self.info
        mode = ("FOLLOW", "$pass") if info.following else ("PAUSED", "$errored")
        parts: list = [(f" {mode[0]} ", f"reverse bold {mode[1]}"), " "]
        for name, state in info.health:
            badge = HEALTH_BADGES[state]
            parts += [SHORT_NAMES.get(name, name) if short_names else name, " ", (badge.text, f"${badge.style}"), "  "]
        badge = HEALTH_BADGES[info.connection]
        parts += [(badge.text, f"${badge.style}")]
        if info.dispatcher and not short_counts:
            parts += [" ", ("active ", "dim"), info.dispatcher]
        parts += [" │ "]
        if info.counts is None:
            parts += [(LOADING, "dim"), " "]
        else:
            for state in COUNTED:
                badge = JOB_BADGES[state]
                count = info.counts.get(state, 0)
                text = f"{badge.glyph}{count}" if short_counts else f"{badge.glyph} {count} {badge.word}"
                parts += [(text, f"${badge.style}"), " "]
        if info.bisection is not None:
            parts += ["│ ", self._bisection(info.bisection, short_counts), " "]
        if info.note:
            parts += ["│ ", (info.note, "bold")]
        return Content.assemble(*parts)

    @staticmethod
    def _bisection(bisection: p.BisectionInfo, short: bool) -> tuple[str, str]:
        if bisection.first_bad is not None:
            badge, text = FIRST_BAD, f"on {bisection.branch}: {short_sha(bisection.first_bad)}"
        else:
            badge, text = BISECTING, f"{bisection.branch}: {len(bisection.jobs)} job{'s' * (len(bisection.jobs) != 1)}"
        return f"{badge.glyph} {text}" if short else f"{badge.glyph} {badge.word} {text}", f"${badge.style}"

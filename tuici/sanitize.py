"""Make untrusted text (test output, commit subjects, branch names) safe to show in a terminal.

Colour (SGR) sequences may stay; everything else that could move the cursor, clear
the screen, set the title or reach the clipboard is removed.
"""

from __future__ import annotations

import codecs
import re

_SEQUENCES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"            # CSI ... final
    r"|\x1b[\]P^_X][^\x07\x1b]*(?:\x07|\x1b\\|$)"  # OSC, DCS, PM, APC, SOS up to their terminator
    r"|\x1b[ -/]*[0-~]"                    # other escapes
    r"|\x1b"                               # a lone ESC
)
SEQUENCES_BYTES = re.compile(_SEQUENCES.pattern.encode())  # the same, over bytes (a log searched undecoded)
_SGR = re.compile(r"\x1b\[[0-9;:]*m")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROLS_BUT_ESC = re.compile(r"[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f-\x9f]")


def _keep_colour(match: re.Match) -> str:
    text = match.group(0)
    return text if _SGR.fullmatch(text) else ""


def clean(text: str, colour: bool = True) -> str:
    """``text`` without terminal control sequences; lone carriage returns become newlines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SEQUENCES.sub(_keep_colour if colour else "", text)
    # Any ESC still here starts a colour sequence that was kept on purpose.
    return (_CONTROLS_BUT_ESC if colour else _CONTROLS).sub("", text)


def one_line(text: str) -> str:
    """A commit subject, branch or author name: no controls, no colour, no newlines, no tabs (a tab would
    move the cursor to a tab stop, out of a table's column)."""
    return clean(text, colour=False).replace("\n", " ").replace("\t", " ")


class StreamCleaner:
    """``clean`` for a byte stream in chunks: UTF-8 characters split between chunks survive."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes, final: bool = False) -> str:
        return clean(self._decoder.decode(data, final))

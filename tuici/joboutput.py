"""A job's output as it streams to a terminal (`tuici log`, `tuici try`): control sequences removed, and a lost
attempt's restart said, since the dispatcher drops that attempt's output and sends the next one's from offset 0.

No asyncio here: `tuici log` feeds it from a blocking socket, `tuici try` from the asyncio client.
"""

from __future__ import annotations

from typing import TextIO

from . import wire as p
from .sanitize import StreamCleaner

LOST_ATTEMPT = "\n--- tuici: the runner was lost; the next attempt's output follows ---\n"


class OutputPrinter:
    def __init__(self, out: TextIO):
        self.out = out
        self.offset = 0  # how much of the log has been printed
        self._cleaner = StreamCleaner()

    def feed(self, chunk: p.JobOutput) -> None:
        if chunk.offset < self.offset:
            self.out.write(LOST_ATTEMPT)
            self._cleaner = StreamCleaner()
        self.out.write(self._cleaner.feed(chunk.data))
        self.offset = chunk.offset + len(chunk.data)
        self.out.flush()

"""A line index over a job's log file on disk, so any line can be shown without loading the file.

The index keeps the byte offset of every ``STRIDE``-th line only (the start of a block),
so a million-line log costs about 125 KB of offsets; a block's lines are read with one
``pread`` when they come into view. Every method here does disk work: call them from a
worker thread, never from the UI thread.
"""

from __future__ import annotations

import itertools
import os
import re
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rich.cells import cell_len
from rich.text import Text

from ..sanitize import SEQUENCES_BYTES, clean

STRIDE = 64  # lines per block
SCAN_CHUNK = 8 << 20  # bytes read per step while indexing
SCAN_BUDGET = 32 << 20  # bytes indexed per call, so a huge log shows progress as it is indexed
MAX_BLOCK_BYTES = 4 << 20  # a block of absurdly long lines is cut here
MAX_LINE_BYTES = 8192  # a line is shown up to here
_BLOCK = re.compile(rb"(?:[^\n]*\n){%d}" % STRIDE)
# Bytes that a line is not shown as, once escape sequences are out: controls (carriage returns, tabs), C1 ones.
_SHOWN_OTHERWISE = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


@dataclass(frozen=True)
class Match:
    """A line the search found: its number, where in it the match starts (in cells), and whether the search
    went round the end of the log to find it."""

    line: int
    column: int
    wrapped: bool


@dataclass(frozen=True)
class IndexState:
    """What the index covers: the UI keeps the last one it was given and asks for no more."""

    lines: int = 0
    size: int = 0  # bytes indexed
    exists: bool = False
    generation: int = 0  # bumped when the file shrank and was indexed again


class LogIndex:
    def __init__(self, path: Path):
        self.path = path
        self._fh: BinaryIO | None = None
        self._generation = 0
        self._reset()

    def _reset(self) -> None:
        self._checkpoints = array("Q", [0])  # byte offset of line k * STRIDE
        self._block_newlines = 0  # newlines seen in the last, open block
        self._size = 0
        self._tail = 0  # bytes of the last line, not ended by a newline yet

    @property
    def state(self) -> IndexState:
        lines = (len(self._checkpoints) - 1) * STRIDE + self._block_newlines + (1 if self._tail else 0)
        return IndexState(lines=lines, size=self._size, exists=self._fh is not None, generation=self._generation)

    def scan(self, budget: int = SCAN_BUDGET) -> tuple[IndexState, bool]:
        """Index up to ``budget`` bytes appended since the last call; also whether more is waiting.

        A file that shrank (a lost attempt's output is discarded when its job is requeued)
        is indexed again from the start, with a new generation.
        """
        if self._fh is None:
            try:
                self._fh = open(self.path, "rb")
            except FileNotFoundError:
                return self.state, False
        size = os.fstat(self._fh.fileno()).st_size
        if size < self._size:
            self._reset()
            self._generation += 1
        end = min(size, self._size + budget)
        self._fh.seek(self._size)
        while self._size < end:
            chunk = self._fh.read(min(SCAN_CHUNK, end - self._size))
            if not chunk:
                break
            self._index_chunk(chunk)
        return self.state, self._size < size

    def _index_chunk(self, chunk: bytes) -> None:
        pos = 0
        need = STRIDE - self._block_newlines  # newlines that close the open block
        while need and (newline := chunk.find(b"\n", pos)) >= 0:
            pos, need = newline + 1, need - 1
        if need:
            self._block_newlines = STRIDE - need
        else:
            append = self._checkpoints.append
            append(self._size + pos)
            # Anchored, block after block: a search (finditer) would retry from every byte of the last,
            # unfinished block, scanning to the end each time: 25 times the work on a chunk of 10,000 lines.
            match = _BLOCK.match
            while (block := match(chunk, pos)) is not None:
                pos = block.end()
                append(self._size + pos)
            self._block_newlines = chunk.count(b"\n", pos)
        last_newline = chunk.rfind(b"\n")
        self._tail = self._tail + len(chunk) if last_newline < 0 else len(chunk) - last_newline - 1
        self._size += len(chunk)

    def read_block(self, block: int) -> list[Text]:
        """The lines of block ``block`` as indexed so far, safe to display."""
        return [display_line(raw) for raw in self._raw_lines(self._block_bytes(block), block)]

    def _block_bytes(self, block: int) -> bytes:
        if self._fh is None or block >= len(self._checkpoints):
            return b""
        start = self._checkpoints[block]
        end = self._checkpoints[block + 1] if block + 1 < len(self._checkpoints) else self._size
        return os.pread(self._fh.fileno(), min(end - start, MAX_BLOCK_BYTES), start)

    def _raw_lines(self, data: bytes, block: int) -> list[bytes]:
        count = max(0, min(STRIDE, self.state.lines - block * STRIDE))
        raw_lines = data.split(b"\n")[:count]
        return raw_lines + [b""] * (count - len(raw_lines))  # a block cut at MAX_BLOCK_BYTES

    def find(self, needle: str, start: int, forward: bool = True) -> Match | None:
        """The first line after ``start`` (before it, backwards) whose text as shown contains ``needle``,
        wrapping around the end; lower-case text matches any case, text with a capital only itself. A block
        of lines is decoded only when its bytes may hold the needle."""
        total = self.state.lines
        if not needle or not total:
            return None
        fold = needle == needle.lower()
        key = needle.lower() if fold else needle
        # Bytes can rule a block out only if the needle is ASCII (bytes.lower() folds ASCII only) and nothing
        # in the block is shown other than it is written.
        raw = key.encode() if key.isascii() else None
        if forward:
            order = itertools.chain(range(start + 1, total), range(0, min(start + 1, total)))
        else:
            order = itertools.chain(range(min(start, total) - 1, -1, -1), range(total - 1, max(start, 0) - 1, -1))
        block, texts = -1, None
        for number in order:
            here, row = divmod(number, STRIDE)
            if here != block:
                block, texts = here, self._searchable(here, raw, fold)
            if texts is None or row >= len(texts):
                continue
            text = texts[row].lower() if fold else texts[row]
            column = text.find(key)
            if column >= 0:
                wrapped = number <= start if forward else number >= start
                return Match(number, cell_len(texts[row][:column]), wrapped)
        return None

    def _searchable(self, block: int, raw: bytes | None, fold: bool) -> list[str] | None:
        """The block's lines as shown, unless its bytes show that none holds ``raw``: with escape sequences
        taken out (colour, mostly), bytes show as they are but for controls (carriage returns, tabs)."""
        data = self._block_bytes(block)
        if raw is not None:
            bare = SEQUENCES_BYTES.sub(b"", data) if b"\x1b" in data else data
            if raw not in (bare.lower() if fold else bare) and not _SHOWN_OTHERWISE.search(bare):
                return None
        return [plain_line(line) for line in self._raw_lines(data, block)]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def failure_heading(name: str) -> re.Pattern[str]:
    """The line where pytest's report of test ``name`` (a node id) begins: its failure, its error in setup or
    teardown, or its module's collection error, headed ``____ Class.test[param] ____``."""
    parts = name.split("::")
    head = re.escape(".".join(parts[1:]) if len(parts) > 1 else parts[0])
    return re.compile(rf"_+ (?:ERROR at (?:setup|teardown) of |ERROR collecting )?{head} _+")


def find_line(path: Path, pattern: re.Pattern[str]) -> int | None:
    """The number of the first line of the file at ``path`` that ``pattern`` matches whole (shown as
    ``display_line`` shows it), or None. Reads the whole file: call it from a worker thread."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh):
            if pattern.fullmatch(display_line(raw.rstrip(b"\n")).plain.strip()):
                return number
    return None


def _last_state(raw: bytes) -> str:
    raw = raw[:MAX_LINE_BYTES]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if b"\r" in raw:  # a progress bar redrawn in place: show its last state
        raw = raw[raw.rfind(b"\r") + 1:]
    return raw.decode("utf-8", errors="replace")


def display_line(raw: bytes) -> Text:
    """One line of test output as it would look in a terminal, without anything but colour."""
    text = clean(_last_state(raw))
    line = Text.from_ansi(text) if "\x1b" in text else Text(text)
    line.expand_tabs(8)
    return line


def plain_line(raw: bytes) -> str:
    """``display_line(raw).plain``, without making the styled text (what a search looks through)."""
    return clean(_last_state(raw), colour=False).expandtabs(8)

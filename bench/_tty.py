"""A terminal for the control-center rows: an app runs on a pty, keys are written to it, and
what it draws is read on a thread and cut into frames, each stamped with the time its last
byte arrived.

Like modern terminals, it says it supports synchronized output (mode 2026), so Textual
brackets every frame and "the first frame that shows X" is exact. Of a terminal's screen
only the cursor position is followed: enough to tell where a character was drawn.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.cells import cell_len

from .harness import BenchError, Procs

SYNC_QUERY = b"\x1b[?2026$p"
SYNC_SUPPORTED = b"\x1b[?2026;2$y"
SYNC_START = b"\x1b[?2026h"
SYNC_END = b"\x1b[?2026l"
_ESCAPE = re.compile(r"\x1b\[[0-9;:?<>=$]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[^\[\]]")
_MOVE = re.compile(r"\x1b\[(\d*);?(\d*)H")
MAX_FRAMES = 10_000  # frames kept unread; older ones are dropped


@dataclass
class Frame:
    at: float  # time.perf_counter() when its last byte was read
    text: str  # as written, escape sequences included

    def plain(self) -> str:
        """The characters drawn, escape sequences removed."""
        return _ESCAPE.sub("", self.text)

    def cells(self, char: str) -> set[tuple[int, int]]:
        """(row, column) of every cell where ``char`` was drawn, 0-based."""
        found: set[tuple[int, int]] = set()
        if char not in self.text:
            return found
        row = col = 0
        pos = 0
        for escape in _ESCAPE.finditer(self.text):
            row, col = _advance(self.text[pos:escape.start()], row, col, char, found)
            pos = escape.end()
            move = _MOVE.fullmatch(escape.group())
            if move:
                row, col = int(move.group(1) or 1) - 1, int(move.group(2) or 1) - 1
        _advance(self.text[pos:], row, col, char, found)
        return found


def _advance(text: str, row: int, col: int, char: str, found: set[tuple[int, int]]) -> tuple[int, int]:
    for line_no, line in enumerate(text.split("\n")):
        if line_no:
            row, col = row + 1, 0
        at = line.find(char)
        while at >= 0:
            found.add((row, col + cell_len(line[:at])))
            at = line.find(char, at + 1)
        col += cell_len(line)
    return row, col


class Terminal:
    """``argv`` running on a pty of ``size`` (columns, rows), started through ``procs`` and stopped by pid."""

    def __init__(self, procs: Procs, name: str, argv: list[str], size: tuple[int, int],
                 env: dict[str, str] | None = None, cwd: Path | None = None):
        self.procs = procs
        self.name = name
        self.watch: Callable[[Frame], None] | None = None  # sees every frame, on the reader thread
        self._frames: deque[Frame] = deque(maxlen=MAX_FRAMES)
        self._cond = threading.Condition()
        self._tail = b""
        self._closed = False
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        try:
            self.started = time.perf_counter()
            self.proc = procs.spawn(name, argv, cwd=cwd, tty=slave,
                                    env={"TERM": "xterm-256color", "COLORTERM": "truecolor", **(env or {})})
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)
        self._reader = threading.Thread(target=self._read, name=f"tty-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def press(self, key: bytes) -> float:
        """Type ``key``; the time it was typed."""
        at = time.perf_counter()
        os.write(self.master, key)
        return at

    def wait(self, shows: Callable[[Frame], bool], since: float, timeout: float, what: str) -> Frame:
        """The first frame completed after ``since`` that ``shows`` what is waited for."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                while not self._frames:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closed:
                        raise BenchError(f"{self.name}: no frame showed {what} within {timeout:.0f} s "
                                         f"(exit code {self.proc.poll()}; last output: {self.tail()!r})")
                    self._cond.wait(left)
                frame = self._frames.popleft()
            if frame.at >= since and shows(frame):
                return frame

    def tail(self) -> str:
        """The last bytes it wrote, escape sequences removed (what a crash printed)."""
        return _ESCAPE.sub("", self._tail.decode(errors="replace"))[-600:]

    def close(self, quit_key: bytes | None = None, grace: float = 20.0) -> None:
        """Quit with ``quit_key`` if given and wait for the exit; then stop it by pid, whatever happened."""
        try:
            if quit_key is not None and self.proc.poll() is None:
                self.press(quit_key)
                self.proc.wait(grace)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            self.procs.stop([self.name])
            self._reader.join(5)
            os.close(self.master)

    # ------------------------------------------------------------------ the reader thread

    def _read(self) -> None:
        pending = b""
        synced = False
        try:
            while True:
                try:
                    data = os.read(self.master, 1 << 16)
                except OSError:  # EIO: every process holding the pty's other end has exited
                    break
                if not data:
                    break
                now = time.perf_counter()
                if SYNC_QUERY in pending[-16:] + data:
                    os.write(self.master, SYNC_SUPPORTED)
                self._tail = (self._tail + data)[-4096:]
                pending += data
                while pending:
                    if not synced:  # until the app brackets its frames, every read is a frame
                        start = pending.find(SYNC_START)
                        if start < 0:
                            self._emit(now, pending)
                            pending = b""
                            break
                        self._emit(now, pending[:start])
                        pending, synced = pending[start:], True
                    end = pending.find(SYNC_END)
                    if end < 0:
                        break
                    self._emit(now, pending[:end])
                    pending = pending[end + len(SYNC_END):]
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _emit(self, at: float, data: bytes) -> None:
        if not data:
            return
        frame = Frame(at, data.decode(errors="replace"))
        if self.watch is not None:
            self.watch(frame)
        with self._cond:
            self._frames.append(frame)
            self._cond.notify_all()

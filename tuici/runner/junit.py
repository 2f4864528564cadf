"""Counts from the JUnit XML a job wrote: read as a file the code under test controls."""

from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

MAX_JUNIT_SIZE = 64 * 1024 * 1024


def junit_counts(paths: list[Path]) -> tuple[int, int, int] | None:
    """(passed, failed, skipped) summed over the JUnit XML files that exist, or None.

    The code under test wrote them: only regular files of a sane size are read, never through a symbolic link
    (it could point at a file of the runner's), never a FIFO (it would block us for ever); a file whose counts
    are not numbers is ignored.
    """
    total = failed = skipped = 0
    found = False
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_JUNIT_SIZE:
                continue
            with os.fdopen(os.dup(fd), "rb") as fh:
                root = ET.parse(fh).getroot()
            suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
            counts = [(int(s.get("tests", 0)), int(s.get("failures", 0)) + int(s.get("errors", 0)),
                       int(s.get("skipped", 0))) for s in suites]
        except (OSError, ET.ParseError, ValueError):
            continue
        finally:
            os.close(fd)
        for tests, failures, skips in counts:
            found = True
            total, failed, skipped = total + tests, failed + failures, skipped + skips
    if not found:
        return None
    return total - failed - skipped, failed, skipped

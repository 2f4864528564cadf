"""The JUnit XML a job wrote: its test cases and counts, read as a file the code under test controls."""

from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml.ElementTree as SafeET

from .. import testcases
from .. import wire as p

MAX_JUNIT_SIZE = 64 * 1024 * 1024


@dataclass
class JunitReport:
    """What a JUnit XML file reported: every test case (``testcases.MAX_CASES`` at most), and the counts its
    suites claim, for a file that lists no cases (or too many)."""

    cases: list[p.TestCase] = field(default_factory=list)
    suite_counts: tuple[int, int, int] | None = None  # (passed, failed, skipped) from the suites' attributes
    truncated: bool = False  # it had more cases than were kept

    @property
    def counts(self) -> tuple[int, int, int] | None:
        """(passed, failed, skipped): from the cases where they are all here, else as the suites say."""
        if self.cases and not self.truncated:
            s = testcases.summary(self.cases)
            return s.passed, s.failed, s.skipped
        return self.suite_counts


def read_junit(path: Path, node_ids: testcases.NodeIds) -> JunitReport | None:
    """The report in the JUnit XML file at ``path``, or None if there is none that can be read.

    The code under test wrote it: only a regular file of a sane size is read, never through a symbolic link (it
    could point at a file of the runner's), never a FIFO (it would block us for ever); no DTD, so no entity
    expansion; streamed, so memory is bounded by the cases kept, not by the file; text is capped per case.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_JUNIT_SIZE:
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            return _parse(fh, node_ids)
    except (OSError, ET.ParseError, ValueError):  # defusedxml's refusals are ValueErrors
        return None
    finally:
        os.close(fd)


def _parse(fh, node_ids: testcases.NodeIds) -> JunitReport:
    report = JunitReport()
    counts = None
    parents: list[ET.Element] = []
    for event, element in SafeET.iterparse(fh, events=("start", "end"), forbid_dtd=True):
        if event == "start":
            parents.append(element)
            continue
        parents.pop()
        if element.tag == "testcase":
            if len(report.cases) < testcases.MAX_CASES:
                case = testcases.case_from_xml(element, node_ids)
                if case is not None:
                    report.cases.append(case)
            else:
                report.truncated = True
            if parents:
                del parents[-1][-1]  # done with it: the tree keeps no case, however many the file holds
        elif element.tag == "testsuite":
            tests, failures, errors, skips = (int(element.get(key, 0))
                                              for key in ("tests", "failures", "errors", "skipped"))
            passed, failed, skipped = counts or (0, 0, 0)
            counts = (passed + tests - failures - errors - skips, failed + failures + errors, skipped + skips)
    report.cases = testcases.merged(report.cases)
    report.suite_counts = counts
    return report

"""The bisection rules, apart from any I/O: when a branch's failure calls for one, which commit it tests next,
and when it has found the first failing commit or must give up.

A bisection runs over a range of a branch's commits in the order the dispatcher knows them (as the observer
reported them, oldest first): from a commit that passed (``good``) to the next tested one, which failed
(``bad``), over the commits between them that have no verdict (coalesced, off the first-parent chain,
cancelled, or still queued behind newer ones). It tests the midpoint of what is left, one job at a time, so
N untested commits cost at most ceil(log2(N + 1)) jobs; any other verdict inside the range (a job that ran
anyway) narrows it for free. The scheduler says what each commit's state is; these functions say what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .. import wire as p

# What the scheduler knows of a commit: its verdict (the newest passed or failed job), that it is being tested
# (a job queued or running), that it could not be (its jobs ended in error), or nothing yet.
Mark = Literal["passed", "failed", "queued", "running", "untestable", "untested"]


@dataclass
class Bisection:
    """One bisection, as stored: what ``status --json`` shows, and the jobs it queued itself (ended if it no
    longer needs them before they start; the other jobs it moved up go back where they were). Its lists are
    replaced, never changed in place: the copies in effects and events share them."""

    id: int
    info: p.BisectionInfo
    made: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    """What a bisection does now: go on (testing the commit at index ``probe`` of its range, or waiting for
    the running job it has there, when ``probe`` is None), or end as found (``first_bad``, an index) or
    abandoned."""

    state: p.BisectionState
    probe: int | None = None
    first_bad: int | None = None


def starts(below: tuple[int, Mark] | None, above: tuple[int, Mark]) -> bool:
    """Whether two neighbouring tested commits of a branch, the newer one (``above``) the branch's newest, call
    for a bisection between them: positions and verdicts, ``below`` the previous tested commit if any."""
    if below is None:
        return False
    (low, low_mark), (high, high_mark) = below, above
    return low_mark == "passed" and high_mark == "failed" and high - low > 1


def step(marks: Sequence[Mark], fixed: bool, waiting_on: int | None) -> Step:
    """The next step of a running bisection, from the marks of its range's commits (index 0 is ``good``, the
    last is ``bad``). ``fixed``: a commit newer than ``bad`` passed since, so the branch no longer fails.
    ``waiting_on``: the index of the commit of its newest job, if that job is still queued or running.

    The range narrows to its newest passing commit and the oldest failing one after it (a rerun may have
    changed either end's verdict: without a pass followed by a failure there is nothing left to find). Commits
    whose jobs ended in error are skipped, as ``git bisect skip`` does; if only they are left, it gives up.
    """
    if fixed:
        return Step("abandoned")
    low = next((i for i in range(len(marks) - 1, -1, -1) if marks[i] == "passed"), None)
    if low is None:
        return Step("abandoned")
    high = next((i for i in range(low + 1, len(marks)) if marks[i] == "failed"), None)
    if high is None:
        return Step("abandoned")
    if high == low + 1:
        return Step("found", first_bad=high)
    candidates = [i for i in range(low + 1, high) if marks[i] != "untestable"]
    if not candidates:
        return Step("abandoned")
    if waiting_on is not None and low < waiting_on < high and marks[waiting_on] == "running":
        return Step("running")  # its answer halves what is left: never a second job beside it
    middle = (low + high) // 2
    return Step("running", probe=min(candidates, key=lambda i: (abs(i - middle), i)))

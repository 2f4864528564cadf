"""The bisection rules alone (tuici/dispatcher/bisection.py): marks in, a step out; no scheduler, no time."""

from __future__ import annotations

import math

import pytest

from tuici.dispatcher import bisection as bi


def bisect_with(untested: int, first_bad: int) -> tuple[int, list[int]]:
    """Run a bisection over ``untested`` commits between a passing and a failing one, where commit
    ``first_bad`` (1-based: the failing end is ``untested + 1``) is the first to fail, each probe answered at
    once; what it found and the commits it tested."""
    marks: list[bi.Mark] = ["passed", *["untested"] * untested, "failed"]
    probes = []
    while True:
        step = bi.step(marks, fixed=False, waiting_on=None)
        if step.state != "running":
            assert step.state == "found" and step.first_bad is not None
            return step.first_bad, probes
        assert step.probe is not None and marks[step.probe] == "untested"
        probes.append(step.probe)
        marks[step.probe] = "failed" if step.probe >= first_bad else "passed"


@pytest.mark.parametrize("untested", [1, 2, 3, 7, 15, 16, 99, 100])
def test_it_finds_the_first_failing_commit_in_at_most_ceil_log2_n_plus_1_jobs(untested):
    bound = math.ceil(math.log2(untested + 1))
    for first_bad in range(1, untested + 2):
        found, probes = bisect_with(untested, first_bad)
        assert found == first_bad and len(probes) <= bound, (first_bad, probes)


def test_sixteen_commits_with_the_regression_at_the_eleventh():
    found, probes = bisect_with(15, 11)  # commit 0 passed, 1..15 coalesced, 16 failed
    assert found == 11 and probes == [8, 12, 10, 11]


def test_a_verdict_that_came_anyway_narrows_the_range_for_free():
    marks: list[bi.Mark] = ["passed", "untested", "untested", "passed", "untested", "untested", "untested", "failed"]
    assert bi.step(marks, fixed=False, waiting_on=None) == bi.Step("running", probe=5)
    marks[5], marks[4] = "failed", "failed"
    assert bi.step(marks, fixed=False, waiting_on=None) == bi.Step("found", first_bad=4)


def test_it_waits_for_its_running_job_inside_the_range_and_never_beside_it():
    marks: list[bi.Mark] = ["passed", "untested", "running", "untested", "untested", "failed"]
    assert bi.step(marks, fixed=False, waiting_on=2) == bi.Step("running")
    # The same job once the range moved past it (a verdict that came anyway): it tests the new middle.
    marks[3] = "passed"
    assert bi.step(marks, fixed=False, waiting_on=2) == bi.Step("running", probe=4)


def test_a_commit_already_being_tested_is_chosen_as_it_is():
    marks: list[bi.Mark] = ["passed", "untested", "queued", "untested", "failed"]
    assert bi.step(marks, fixed=False, waiting_on=None) == bi.Step("running", probe=2)


def test_commits_that_cannot_be_tested_are_skipped_and_when_only_they_are_left_it_gives_up():
    marks: list[bi.Mark] = ["passed", "untested", "untestable", "untested", "failed"]
    assert bi.step(marks, fixed=False, waiting_on=None) == bi.Step("running", probe=1)
    marks[1], marks[3] = "passed", "failed"
    assert bi.step(marks, fixed=False, waiting_on=None) == bi.Step("abandoned")


def test_a_newer_commit_that_passed_ends_it():
    marks: list[bi.Mark] = ["passed", "untested", "untested", "failed"]
    assert bi.step(marks, fixed=True, waiting_on=None) == bi.Step("abandoned")


@pytest.mark.parametrize("ends", [("failed", "failed"), ("passed", "passed")])
def test_it_ends_when_a_rerun_changed_an_end_of_the_range(ends):
    marks: list[bi.Mark] = [ends[0], "untested", "untested", ends[1]]
    assert bi.step(marks, fixed=False, waiting_on=None) == bi.Step("abandoned")


@pytest.mark.parametrize(("below", "above", "starts"), [
    ((3, "passed"), (9, "failed"), True),
    ((8, "passed"), (9, "failed"), False),  # nothing untested between them
    ((3, "failed"), (9, "failed"), False),  # it was broken already
    ((3, "passed"), (9, "passed"), False),
    (None, (9, "failed"), False),  # nothing passed before
])
def test_a_bisection_starts_on_a_pass_then_a_failure_with_untested_commits_between(below, above, starts):
    assert bi.starts(below, above) is starts

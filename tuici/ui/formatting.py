"""How states, times and counts read on screen: every status is a glyph, a word and a colour.

The colour is named by a theme variable (``pass``, ``fail``...), so a theme can restyle it,
and the glyph and word carry the meaning on their own for anyone who cannot see the colour.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import wire as p


class Badge(NamedTuple):
    glyph: str
    word: str
    style: str  # a theme variable name, see STATE_VARIABLES

    @property
    def text(self) -> str:
        return f"{self.glyph} {self.word}"


JOB_BADGES: dict[str, Badge] = {
    "queued": Badge("○", "queued", "queued"),
    "running": Badge("▶", "running", "running"),
    "passed": Badge("✔", "passed", "pass"),
    "failed": Badge("✘", "failed", "fail"),
    "error": Badge("!", "error", "errored"),
    "cancelled": Badge("⊘", "cancelled", "cancelled"),
}
NO_JOB = Badge("·", "no job", "cancelled")
SKIPPED = Badge("↷", "skipped", "cancelled")  # [skip ci] in its message: it has no job
FIRST_BAD = Badge("⚑", "first bad", "fail")  # the commit a bisection found to be the first failing one
BISECTING = Badge("⌕", "bisecting", "running")
LOADING = "loading the history…"  # in place of the job counts and of the number of commits, until they are known

RUNNER_BADGES: dict[str, Badge] = {
    "idle": Badge("○", "idle", "queued"),
    "busy": Badge("▶", "busy", "running"),
    "lost": Badge("✘", "lost", "fail"),
    "starting": Badge("◌", "starting", "queued"),
    "stopping": Badge("◌", "stopping", "queued"),
}

# A test case's outcome (``flaky``: failed, then passed on retry).
TEST_BADGES: dict[str, Badge] = {
    "passed": Badge("✔", "passed", "pass"),
    "failed": Badge("✘", "failed", "fail"),
    "error": Badge("!", "error", "errored"),
    "skipped": Badge("↷", "skipped", "cancelled"),
    "xfailed": Badge("↷", "xfailed", "cancelled"),
    "xpassed": Badge("✔", "xpassed", "pass"),
    "flaky": Badge("≈", "flaky", "errored"),
}

# Health of a supervised process (dispatcher, observer) and of our connection to the dispatcher.
HEALTH_BADGES: dict[str, Badge] = {
    "up": Badge("●", "up", "pass"),
    "starting": Badge("◌", "starting", "queued"),
    "restarting": Badge("↻", "restarting", "errored"),
    "down": Badge("✘", "down", "fail"),
    "external": Badge("○", "external", "queued"),
    "connecting": Badge("◌", "connecting", "queued"),
    "connected": Badge("⇄", "connected", "pass"),
    "reconnecting": Badge("↻", "reconnecting", "errored"),
    "refused": Badge("✘", "refused", "fail"),
}

# The theme variables every job and runner state is drawn with.
STATE_VARIABLES = ("pass", "fail", "running", "queued", "errored", "cancelled")


def job_badge(job: p.JobInfo | None) -> Badge:
    return NO_JOB if job is None else JOB_BADGES.get(job.state, NO_JOB)


def commit_badge(commit: p.CommitInfo, job: p.JobInfo | None) -> Badge:
    """Its latest job's state; ``skipped`` for a commit whose message said [skip ci] and that has no job."""
    return SKIPPED if job is None and commit.skipped else job_badge(job)


def duration(seconds: float | None) -> str:
    """``0.4s``, ``42s``, ``3m05s``, ``2h07m``; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def age(since: float | None, now: float) -> str:
    """How long ago, in the largest whole unit: ``now``, ``45s``, ``3m``, ``2h``, ``5d``."""
    if not since:
        return ""
    seconds = max(0, int(now - since))
    if seconds < 1:
        return "now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def job_duration(job: p.JobInfo | None, now: float) -> str:
    """The finished job's duration, or how long a running one has been going."""
    if job is None:
        return ""
    if job.duration_s is not None:
        return duration(job.duration_s)
    if job.state == "running" and job.started_at:
        return duration(max(0.0, now - job.started_at))
    return ""


def test_counts(job: p.JobInfo | None) -> str:
    """``41✔ 2✘ 1↷`` (passed, failed, skipped); empty when the command wrote no JUnit XML."""
    if job is None or job.passed is None:
        return ""
    parts = [f"{job.passed}✔"]
    if job.failed:
        parts.append(f"{job.failed}✘")
    if job.skipped:
        parts.append(f"{job.skipped}↷")
    return " ".join(parts)


def short_sha(sha: str) -> str:
    return sha[:7]


def test_badge(case: p.TestCase) -> Badge:
    return TEST_BADGES["flaky" if case.flaky else case.outcome]


def test_duration(seconds: float) -> str:
    """A test's duration: ``40ms`` below a second, else as ``duration``."""
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else duration(seconds)


def change_short(change: p.Change | None) -> str:
    """Where a test's outcome changed, in a column: the commit, else the range of untested commits (``a..b``),
    else since when (nothing before on record)."""
    if change is None:
        return ""
    if change.commit is not None:
        return short_sha(change.commit)
    if change.after:
        return f"{short_sha(change.after)}..{short_sha(change.since)}"
    return f"since {short_sha(change.since)}"

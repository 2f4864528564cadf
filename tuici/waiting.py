"""`tuici wait`: block until the job for a commit (or a job by number) is final.

It asks for the status once, then follows the event stream, so it wakes when the job ends rather than polling.
Blocking sockets and a `git rev-parse` only (no asyncio, no GitPython): a pre-push hook runs it on every push.
A dispatcher that restarts meanwhile is waited for, for ``RESTART_PATIENCE`` seconds at most.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Literal

from . import wire as p
from .errors import CommandError

RESTART_PATIENCE = 30.0  # seconds a dispatcher that went away has to come back
RETRY_DELAY = 0.2
JOB_NUMBER_DIGITS = 6  # a number with at most this many digits is a job; git abbreviates shas to 7 at least


@dataclass(frozen=True)
class Target:
    """A job by its number, or the newest job of a commit (a full sha, or a prefix git could not resolve)."""

    text: str
    job_id: int | None = None
    sha: str = ""

    def matches(self, job: p.JobInfo) -> bool:
        return job.id == self.job_id if self.job_id is not None else job.commit.startswith(self.sha)


@dataclass(frozen=True)
class Verdict:
    outcome: Literal["final", "skipped", "timeout"]
    job: p.JobInfo | None = None
    commit: p.CommitInfo | None = None


def resolve(text: str, repo: str | None) -> Target:
    """JOB is a number of up to six digits; anything else is a commit as git names it in ``repo`` (a sha, a
    branch, HEAD~2), or failing that a sha prefix the dispatcher may know."""
    if text.isdigit() and len(text) <= JOB_NUMBER_DIGITS:
        return Target(text, job_id=int(text))
    if repo is not None:
        done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "--end-of-options", f"{text}^{{commit}}"],
                              cwd=repo, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode == 0:
            return Target(text, sha=done.stdout.strip())
    lowered = text.lower()
    if len(lowered) >= 4 and all(c in "0123456789abcdef" for c in lowered):
        return Target(text, sha=lowered)
    raise CommandError(f"{text!r} is neither a job number nor a commit" + (f" of {repo}" if repo else ""))


def wait(connect: Callable[[], p.Query], target: Target, timeout: float | None,
         waiting: Callable[[str], None] = lambda note: None) -> Verdict:
    """Until the target's job is final (or its commit is skipped, or ``timeout`` seconds passed). ``waiting`` is
    told, once, what is being waited for."""
    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    answered = False  # a dispatcher that never answered is not restarting: there is none
    gone_since: float | None = None
    job: p.JobInfo | None = None
    commit: p.CommitInfo | None = None
    while True:
        try:
            with connect() as query:
                status = query.status()
                answered, gone_since = True, None
                job, commit = _find(status, target)
                if job is not None and job.state in p.FINAL_STATES:
                    return Verdict("final", job, commit)
                if job is None and commit is not None and commit.skipped:
                    return Verdict("skipped", None, commit)
                if not told:
                    waiting(f"job {job.id} ({job.state})" if job is not None else
                            f"a job for {target.text}: none yet")
                    told = True
                query.settimeout(_left(deadline))
                for event in query.events(status.last_seq):
                    if event.job is not None and target.matches(event.job) and (job is None or event.job.id >= job.id):
                        job = event.job
                        if job.state in p.FINAL_STATES:
                            return Verdict("final", job, commit)
                    elif event.commit is not None and target.job_id is None and event.commit.sha.startswith(target.sha):
                        commit = event.commit
                        if commit.skipped:
                            return Verdict("skipped", None, commit)
        except TimeoutError:
            return Verdict("timeout", job, commit)
        except (p.NoDispatcher, ConnectionError, p.ProtocolError):
            # The dispatcher went away (a restart, say): ask again once it is back.
            now = time.monotonic()
            gone_since = gone_since or now
            if not answered or now - gone_since > RESTART_PATIENCE:
                raise
        if deadline is not None and time.monotonic() >= deadline:
            return Verdict("timeout", job, commit)
        time.sleep(RETRY_DELAY)


def _left(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _find(status: p.StatusReply, target: Target) -> tuple[p.JobInfo | None, p.CommitInfo | None]:
    """The target's newest job and its commit (either may be unknown yet)."""
    if target.job_id is not None:
        job = next((j for j in reversed(status.jobs) if j.id == target.job_id), None)
        if job is None:
            raise CommandError(f"no job {target.job_id}")
        return job, next((c for c in status.commits if c.sha == job.commit), None)
    commits = [c for c in status.commits if c.sha.startswith(target.sha)]
    if len(commits) > 1:
        raise CommandError(f"more than one commit matches {target.text!r}")
    job = next((j for j in reversed(status.jobs) if j.commit.startswith(target.sha)), None)
    return job, commits[0] if commits else None

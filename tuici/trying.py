"""`tuici try`: test the work tree as it is, before committing.

The work tree (staged, unstaged and untracked files that git does not ignore, and deletions) is written into a
commit that no branch points to, through an index file of our own: the user's index, branches, stash and work
tree are never touched. The commit is kept under ``refs/tuici/try/<sha>``, so that gc keeps its objects while
runners borrow them (and a runner without the repository's objects can fetch it), until ``prune_try_refs``
removes it once the try's result is older than the retention.

The commit goes to the running dispatcher as a job of kind try, at the front of the queue; with no dispatcher
running, to a private engine (a dispatcher and runners, no observer: nothing but the try is wanted) that is
stopped, every process by pid, when the try ends. Its output streams to the terminal as it is written.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Mapping, TypeVar

from . import wire as p
from .errors import CommandError
from .joboutput import OutputPrinter
from .sanitize import one_line
from .statedir import StateDir
from .supervisor import Supervisor, dispatcher_running
from .wire import Control, NoDispatcher

TRY_REFS = "refs/tuici/try/"
# Variables through which a caller (a git hook, say) would point our git at another index or repository.
_LOCATING = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
             "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX")
FALLBACK_IDENTITY = {"GIT_AUTHOR_NAME": "tuici try", "GIT_AUTHOR_EMAIL": "tuici@localhost",
                     "GIT_COMMITTER_NAME": "tuici try", "GIT_COMMITTER_EMAIL": "tuici@localhost"}
RESTART_PATIENCE = 30.0  # seconds a dispatcher that went away (a restart) has to come back
T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    """A work tree written into a commit."""

    commit: p.ReportedCommit  # its branch: the one HEAD is on ("HEAD" when detached)
    changed: int  # paths that differ from HEAD
    ref: str


def _git(top: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Run git in ``top`` with no hooks (``git add`` would run post-index-change, update-ref the
    reference-transaction hook): its output, or ``CommandError``."""
    done = subprocess.run(["git", "-C", str(top), "-c", "core.hooksPath=/dev/null", *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, env=dict(env) if env is not None else _env())
    if done.returncode != 0:
        raise CommandError(f"git {args[0]} failed in {top}: {done.stderr.strip()}")
    return done.stdout.strip()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LOCATING}
    env.update(extra)
    return env


def snapshot(top: Path, state: StateDir) -> Snapshot:
    """Write the work tree at ``top`` into a commit whose parent is HEAD, under ``refs/tuici/try/<sha>``."""
    index = Path(_git(top, "rev-parse", "--path-format=absolute", "--git-path", "index"))
    head = subprocess.run(["git", "-C", str(top), "rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
                          capture_output=True, text=True, env=_env()).stdout.strip() or None
    branch = subprocess.run(["git", "-C", str(top), "symbolic-ref", "--quiet", "--short", "HEAD"],
                            capture_output=True, text=True, env=_env()).stdout.strip() or "HEAD"
    state.ensure()
    ours = state.path / f"try-index-{os.getpid()}"
    env = _env(GIT_INDEX_FILE=str(ours))
    try:
        if index.exists():
            shutil.copyfile(index, ours)  # its stat cache spares hashing every tracked file again
        elif head is not None:
            _git(top, "read-tree", head, env=env)  # tracked files that .gitignore names stay in
        _git(top, "add", "--all", ":/", env=env)
        tree = _git(top, "write-tree", env=env)
        changed = len(_git(top, "diff-index", "--cached", "--name-only", "-z", head, env=env).split("\0")) - 1 \
            if head is not None else len(_git(top, "ls-files", "-z", env=env).split("\0")) - 1
    finally:
        ours.unlink(missing_ok=True)
        Path(f"{ours}.lock").unlink(missing_ok=True)
    subject = f"tuici try of {branch}: {changed} changed file{'s' if changed != 1 else ''}"
    ident = subprocess.run(["git", "-C", str(top), "var", "GIT_AUTHOR_IDENT"], capture_output=True, text=True,
                           env=_env())
    identity = {} if ident.returncode == 0 else FALLBACK_IDENTITY  # no user.name: commit-tree would refuse
    author = ident.stdout.partition(" <")[0] if ident.returncode == 0 else FALLBACK_IDENTITY["GIT_AUTHOR_NAME"]
    sha = _git(top, "commit-tree", tree, *(["-p", head] if head else []), "-m", subject, env=_env(**identity))
    ref = TRY_REFS + sha
    _git(top, "update-ref", ref, sha)
    commit = p.ReportedCommit(sha=sha, branch=branch, author=author, subject=subject, time=time.time())
    return Snapshot(commit, changed, ref)


def prune_try_refs(top: Path, finished_at: Mapping[str, float | None], cutoff: float) -> list[str]:
    """Delete the ``refs/tuici/try/*`` of tries whose result is older than ``cutoff`` (unix seconds), and of those
    made before it that no job knows of (a try stopped before it was queued, or whose job retention removed).
    ``finished_at``: each try commit's latest job's finish time, None while it is queued or running. Returns the
    refs removed. For retention (``keep_days``): run it with the jobs it keeps."""
    listing = _git(top, "for-each-ref", "--format=%(refname)%00%(objectname)%00%(committerdate:unix)", TRY_REFS)
    doomed = []
    for line in listing.splitlines():
        ref, sha, made = line.split("\0")
        ended = finished_at[sha] if sha in finished_at else float(made or 0)  # None: queued or running
        if ended is not None and ended < cutoff:
            doomed.append((ref, sha))
    if doomed:
        subprocess.run(["git", "-C", str(top), "update-ref", "--stdin"], check=True, capture_output=True, env=_env(),
                       input="".join(f"delete {ref} {sha}\n" for ref, sha in doomed).encode())
    return [ref for ref, _ in doomed]


async def run_try(top: Path, state: StateDir, runners: int, sandbox: str) -> p.JobInfo | None:
    """Snapshot, queue and follow the try until its job is final; None if interrupted before it was queued, or
    if a second interrupt stopped the following before the job ended."""
    loop = asyncio.get_running_loop()
    interrupts = asyncio.Queue[int]()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupts.put_nowait, sig)
    supervisor: Supervisor | None = None
    control: Control | None = None
    try:
        snap = await _interruptible(asyncio.to_thread(snapshot, top, state), interrupts)
        if snap is None:
            return None
        _say(f"testing the work tree of {snap.commit.branch} ({snap.changed} changed file"
             f"{'s' if snap.changed != 1 else ''}) as {snap.commit.sha[:10]}, {snap.ref}")
        if not dispatcher_running(state):
            _say(f"no dispatcher runs for {top}: starting one, with {runners} runner{'s' if runners != 1 else ''}")
            supervisor = Supervisor(top, state, runners=runners, runner_args=["--sandbox", sandbox])
            if await _interruptible(_start_private(supervisor, runners), interrupts) is None:
                return None
        control = _local_control(state)
        reply = await _interruptible(control.try_commit(snap.commit), interrupts)
        if reply is None:
            return None
        if not reply.ok or reply.job is None:
            raise CommandError(reply.message)
        _say(f"{reply.message}; Ctrl-C cancels it")
        return await _follow(control, reply.job, interrupts)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if control is not None:
            await control.close()
        if supervisor is not None:
            await supervisor.stop()


def _local_control(state: StateDir) -> Control:
    """This repository's own dispatcher, whatever $TUICI_DISPATCHER says: the try's objects are here."""
    address = state.address()
    if address is None:
        raise NoDispatcher(f"no dispatcher serves {state.path}")
    return Control(p.Endpoint(p.parse_addresses(address), state.token()))


async def _start_private(supervisor: Supervisor, runners: int) -> bool:
    await supervisor.spawn_dispatcher()
    for _ in range(runners):
        await supervisor.add_runner()
    await supervisor.serving()
    return True


async def _interruptible(work: Awaitable[T], interrupts: asyncio.Queue[int]) -> T | None:
    """``work``'s result, or None if a signal came first (the work is cancelled)."""
    task = asyncio.ensure_future(work)
    signalled = asyncio.ensure_future(interrupts.get())
    await asyncio.wait([task, signalled], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        signalled.cancel()
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    _say("interrupted")
    return None


async def _follow(control: Control, job: p.JobInfo, interrupts: asyncio.Queue[int]) -> p.JobInfo | None:
    """Print the job's output until it is final. The first Ctrl-C (or SIGTERM) cancels the job, and the output
    goes on until it has ended; a second stops following at once."""
    printer = OutputPrinter(sys.stdout)
    cancelling: asyncio.Task | None = None
    follower = asyncio.ensure_future(_stream(control, job.id, printer))
    while True:
        signalled = asyncio.ensure_future(interrupts.get())
        await asyncio.wait([follower, signalled], return_when=asyncio.FIRST_COMPLETED)
        if follower.done():
            signalled.cancel()
            if cancelling is not None:
                await asyncio.gather(cancelling, return_exceptions=True)
            return follower.result()
        if cancelling is None:
            _say(f"cancelling job {job.id}")
            cancelling = asyncio.ensure_future(control.cancel(job.id))
            continue
        follower.cancel()
        await asyncio.gather(follower, cancelling, return_exceptions=True)
        _say(f"stopped following job {job.id}")
        return None


async def _stream(control: Control, job_id: int, printer: OutputPrinter) -> p.JobInfo:
    """The job's output from where the printer is, again after a dropped connection (a dispatcher restart)."""
    gone_since: float | None = None
    while True:
        try:
            async for msg in control.log(job_id, offset=printer.offset, follow=True):
                gone_since = None
                if isinstance(msg, p.JobOutput):
                    printer.feed(msg)
                elif msg.job is not None:
                    return msg.job
                else:
                    raise CommandError(msg.message)
        except (NoDispatcher, OSError, ConnectionError, p.ProtocolError):
            now = time.monotonic()
            gone_since = gone_since or now
            if now - gone_since > RESTART_PATIENCE:
                raise
        await asyncio.sleep(0.2)


def _say(text: str) -> None:
    print(f"tuici: {one_line(text)}", file=sys.stderr, flush=True)

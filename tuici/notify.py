"""Telling the user a branch broke or was fixed: what the notification says, the terminal's or desktop's
notification (``serve``), and the ``notify_command`` hook (the dispatcher).

Where a change is detected is the scheduler's (``branch.broken``/``branch.fixed`` events): the control center,
``serve`` and the hook all react to the same event. The hook's command comes from the user's local settings
(``localconfig``), never from a commit, so it may run outside the sandbox, as the user.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from collections import deque
from dataclasses import dataclass
from typing import Literal, TextIO

from . import wire as p
from .procs import kill_group
from .sanitize import one_line

NotificationKind = Literal["broken", "fixed", "try"]  # TUICI_EVENT
HOOK_OUTPUT_LIMIT = 64 * 1024  # bytes of a hook's output kept for the log; the rest is read and dropped
HOOK_QUEUE_LIMIT = 100  # notifications waiting for the hook; past it the newest are dropped, with a warning
DESKTOP_TIMEOUT = 10.0  # seconds notify-send may take


@dataclass(frozen=True)
class Notification:
    kind: NotificationKind
    job: p.JobInfo
    subject: str = ""
    author: str = ""
    message: str = ""

    @property
    def title(self) -> str:
        if self.kind == "try":
            return one_line(f"try on {self.job.branch} {self.job.state}")
        return one_line(f"{self.job.branch} is {self.kind}")

    @property
    def body(self) -> str:
        job = self.job
        counts = f", {job.failed} failed" if job.failed else ""
        return one_line(f"{job.commit[:10]} {self.subject} ({job.state}{counts}, job {job.id})")

    def environment(self, repo: str = "", log: str = "") -> dict[str, str]:
        """The ``TUICI_*`` variables the hook runs with. Text from commits is untrusted: one line, no controls."""
        job = self.job
        env = {
            "TUICI_EVENT": self.kind, "TUICI_BRANCH": job.branch, "TUICI_COMMIT": job.commit,
            "TUICI_JOB_ID": str(job.id), "TUICI_STATE": job.state, "TUICI_SUBJECT": self.subject,
            "TUICI_AUTHOR": self.author, "TUICI_MESSAGE": self.message, "TUICI_TITLE": self.title,
            "TUICI_REPO": repo, "TUICI_LOG": log,
        }
        for name, value in (("PASSED", job.passed), ("FAILED", job.failed), ("SKIPPED", job.skipped),
                            ("DURATION", job.duration_s)):
            if value is not None:
                env[f"TUICI_{name}"] = f"{value:g}" if isinstance(value, float) else str(value)
        return {name: one_line(value) for name, value in env.items()}


def notification_for(event: p.Event) -> Notification | None:
    """The notification an event calls for, if any: the one place that decides it. A branch turning red or
    green, and a try (`tuici try`) ending, whatever its result."""
    if event.job is None:
        return None
    kind: NotificationKind
    if event.kind == "branch.broken":
        kind = "broken"
    elif event.kind == "branch.fixed":
        kind = "fixed"
    elif event.kind == "job.finished" and event.job.kind == "try":
        kind = "try"
    else:
        return None
    commit = event.commit
    return Notification(kind, event.job, subject=commit.subject if commit else "",
                        author=commit.author if commit else "", message=event.message)


# ---------------------------------------------------------------------- running a command


async def run_bounded(argv: list[str] | tuple[str, ...], env: dict[str, str], timeout: float, log: logging.Logger,
                      what: str) -> None:
    """Run ``argv`` in a session of its own, its output to ``log`` (cut at HOOK_OUTPUT_LIMIT); killed with its
    whole group after ``timeout`` seconds. Whatever goes wrong is a warning, never an exception."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                    start_new_session=True)
    except OSError as exc:
        log.warning("%s could not start: %s", what, exc)
        return
    assert proc.stdout is not None
    kept = bytearray()

    async def drain() -> int:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            kept.extend(chunk[:HOOK_OUTPUT_LIMIT - len(kept)])
        return await proc.wait()

    try:
        code = await asyncio.wait_for(drain(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
        kill_group(proc.pid)
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        log.warning("%s (pid %s) killed: still running after %g s", what, proc.pid, timeout)
        code = None
    finally:
        for line in kept.decode("utf-8", errors="replace").splitlines():
            log.info("%s: %s", what, one_line(line))
    if code:
        log.warning("%s (pid %s) exited with %s", what, proc.pid, code)


class Hook:
    """Runs ``notify_command`` once per notification, one at a time and in order (a chat gets them as they
    happened), in a task of its own: the event loop never waits for it."""

    def __init__(self, argv: tuple[str, ...], timeout: float, log: logging.Logger):
        self.argv = argv
        self.timeout = timeout
        self.log = log
        self._queue: deque[tuple[Notification, dict[str, str]]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def submit(self, notification: Notification, env: dict[str, str]) -> None:
        if not self.argv:
            return
        if len(self._queue) >= HOOK_QUEUE_LIMIT:
            self.log.warning("notify_command: %s notifications wait already; dropped %s", len(self._queue),
                             notification.title)
            return
        self._queue.append((notification, env))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                notification, env = self._queue.popleft()
                await run_bounded(self.argv, {**_base_env(), **env}, self.timeout, self.log,
                                  f"notify_command ({notification.title})")

    async def stop(self) -> None:
        """Stop, killing a hook that is running (the others are dropped)."""
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _base_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != "TUICI_TOKEN"}


# ---------------------------------------------------------------------- the desktop


def terminal() -> TextIO | None:
    """The terminal ``serve`` runs in, if its stderr or stdout is one."""
    for stream in (sys.stderr, sys.stdout):
        try:
            if stream is not None and stream.isatty():
                return stream
        except ValueError:  # closed
            pass
    return None


def osc_notification(notification: Notification, env: dict[str, str] | os._Environ = os.environ) -> str:
    """The escape sequence that has the terminal show a desktop notification: OSC 9 where the terminal speaks
    that one (iTerm2, kitty, Windows Terminal), else OSC 777 (foot, urxvt, VTE, Ghostty, WezTerm)."""
    title, body = (text.replace(";", ",") for text in (notification.title, notification.body))
    if env.get("TERM_PROGRAM") == "iTerm.app" or env.get("TERM") == "xterm-kitty" or env.get("WT_SESSION"):
        return f"\x1b]9;tuici: {title}: {body}\x07"
    return f"\x1b]777;notify;tuici: {title};{body}\x07"


class Desktop:
    """Desktop notifications for ``serve``: through the terminal when it runs in one, else with notify-send
    where that is installed, else none (the event line says it all the same)."""

    def __init__(self, log: logging.Logger):
        self.log = log
        self._tasks: set[asyncio.Task] = set()

    def show(self, notification: Notification) -> None:
        tty = terminal()
        if tty is not None:
            tty.write(osc_notification(notification))
            tty.flush()
            return
        notify_send = shutil.which("notify-send")
        if notify_send is None:
            return
        task = asyncio.ensure_future(run_bounded(
            [notify_send, "--app-name=tuici", f"tuici: {notification.title}", notification.body], _base_env(),
            DESKTOP_TIMEOUT, self.log, "notify-send"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

"""`tuici serve`: supervise everything for one repository and print every event, one per line."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from . import localconfig
from . import wire as p
from .errors import ConfigError
from .notify import Desktop, notification_for
from .sanitize import StreamCleaner, one_line
from .statedir import StateDir
from .store import last_seq
from .supervisor import Supervisor
from .wire import Control, NoDispatcher

RETRY_DELAY = 0.2  # not backed off: the supervisor paces a dispatcher's restarts

log = logging.getLogger("tuici.serve")


async def serve(args, state: StateDir, top: Path) -> None:
    """Until SIGINT/SIGTERM; ``SupervisorError`` if the dispatcher cannot start."""
    out = Printer(args.json)
    notices: set[asyncio.Task] = set()
    early: list[tuple[p.NoticeKind, str, str]] = []  # what happened before the dispatcher could be told
    control: Control | None = None

    def on_event(kind: p.NoticeKind, name: str, message: str) -> None:
        # Published through the dispatcher, so the stream is the one record of everything.
        if control is None:
            early.append((kind, name, message))
            return
        task = asyncio.ensure_future(_notify(control, kind, name, message))
        notices.add(task)
        task.add_done_callback(notices.discard)

    store_args = ["--store", args.store, "--lease", str(args.lease)] if args.store else []
    supervisor = Supervisor(top, state, runners=args.runners, on_event=on_event, listen=args.listen,
                            runner_args=["--sandbox", args.sandbox],
                            dispatcher_args=["--heartbeat-timeout", str(args.heartbeat_timeout),
                                             "--max-attempts", str(args.max_attempts), *store_args])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    follower = None
    desktop = None
    try:
        try:
            if (await asyncio.to_thread(localconfig.load, state)).notify:
                desktop = Desktop(log)
        except ConfigError as exc:
            log.warning("%s; desktop notifications stay on, retention and notify_command are off", exc)
            desktop = Desktop(log)
        # Read before the dispatcher starts: runners may register before we could ask it for its last event.
        # A shared store is the group's: its last event is the active dispatcher's to tell.
        after = None if supervisor.shared_store else last_seq(state.db)
        await supervisor.start()
        control = Control.for_state(state)
        if after is None:
            after = await _last_event(control)
        follower = asyncio.ensure_future(follow_events(control, out, after, include_output=args.output,
                                                       desktop=desktop))
        for event in early:
            on_event(*event)
        await stop.wait()
    finally:
        if follower is not None:
            follower.cancel()
        await asyncio.gather(*(t for t in [follower] if t), *notices, return_exceptions=True)
        if desktop is not None:
            await desktop.stop()
        if control is not None:
            await control.close()
        await supervisor.stop()


async def _last_event(control: Control, patience: float = 30.0) -> int:
    """The number of the group's last event, from its active dispatcher (a standby points the way)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return (await control.status(limit=1)).last_seq
        except (NoDispatcher, OSError, ConnectionError, p.RefusedError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(RETRY_DELAY)


async def _notify(control: Control, kind: p.NoticeKind, name: str, message: str) -> None:
    try:
        await control.notice(kind, name, message)
    except (NoDispatcher, OSError, ConnectionError):
        pass  # the dispatcher stayed down; the supervisor's own log has it


async def follow_events(control: Control, out: "Printer", last: int, include_output: bool = False,
                        desktop: Desktop | None = None) -> None:
    """Print events after ``last``; after a dropped connection, resume after the last one seen. With
    ``desktop``, show a desktop notification for those that call for one."""

    async def follow() -> bool:
        nonlocal last
        answered = False
        try:
            async for msg in control.subscribe(after_seq=last, output=include_output):
                answered = True
                if isinstance(msg, (p.Event, p.StatusReply)):
                    last = msg.seq if isinstance(msg, p.Event) else msg.last_seq
                out.message(msg)
                if desktop is not None and isinstance(msg, p.Event) and (notice := notification_for(msg)):
                    desktop.show(notice)
        except (NoDispatcher, OSError, ConnectionError, p.ProtocolError):
            pass
        return answered

    await p.reconnect(follow, first=RETRY_DELAY, cap=RETRY_DELAY)


class Printer:
    """Events as JSON lines, or as short human lines."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self._cleaners: dict[int, StreamCleaner] = {}  # job id -> its output's cleaner, while it runs

    def message(self, msg: p.Event | p.JobOutput | p.StatusReply) -> None:
        # Test output, names and subjects are untrusted: never written to the terminal raw.
        if self.as_json:
            self._emit(p.to_json(msg))
        elif isinstance(msg, p.JobOutput):
            sys.stdout.write(self._cleaners.setdefault(msg.job_id, StreamCleaner()).feed(msg.data))
        elif isinstance(msg, p.StatusReply):
            self._emit(f"{time.strftime('%H:%M:%S')} events before {msg.history.events_from} were deleted by "
                       f"retention; going on from the state at event {msg.last_seq} ({len(msg.jobs)} jobs)")
        else:
            if msg.kind == "job.finished" and msg.job is not None:
                self._cleaners.pop(msg.job.id, None)
            line = one_line(f"{msg.kind:<18} {describe(msg)}")
            self._emit(f"{time.strftime('%H:%M:%S', time.localtime(msg.ts))} {line}")

    @staticmethod
    def _emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def describe(event: p.Event) -> str:
    parts = []
    if event.job is not None:
        j = event.job
        parts.append(f"job {j.id} {j.commit[:10]} {j.branch} {j.state}")
        if j.runner and j.state == "running":
            parts.append(f"on {j.runner}")
        if j.duration_s is not None:
            parts.append(f"({j.duration_s:.2f} s)")
        if j.passed is not None:
            parts.append(f"{j.passed} passed, {j.failed} failed, {j.skipped} skipped")
        if j.flaky_tests:
            parts.append(f"({len(j.flaky_tests)}{'+' if len(j.flaky_tests) >= p.MAX_LISTED_TESTS else ''} flaky: "
                         f"{', '.join(j.flaky_tests[:3])}{', …' if len(j.flaky_tests) > 3 else ''})")
    elif event.commit is not None:
        c = event.commit
        parts.append(f"{c.sha[:10]} {c.branch} {c.author}: {c.subject}")
    elif event.runner is not None:
        r = event.runner
        parts.append(f"{r.name} ({r.host}, pid {r.pid}) {r.state}")
    elif event.bisection is not None:
        b = event.bisection
        parts.append(f"{b.branch} {b.good[:10]}..{b.bad[:10]} {b.state}, {len(b.jobs)} job(s)")
    if event.message:
        parts.append(f"- {event.message}")
    return " ".join(parts)

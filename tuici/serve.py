"""`tuici serve`: supervise everything for one repository and print every event, one per line."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

from . import wire as p
from .sanitize import StreamCleaner, one_line
from .statedir import StateDir
from .store import last_seq
from .supervisor import Supervisor
from .wire import Control, NoDispatcher

RETRY_DELAY = 0.2  # not backed off: the supervisor paces a dispatcher's restarts


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

    supervisor = Supervisor(top, state, runners=args.runners, on_event=on_event, listen=args.listen,
                            runner_args=["--sandbox", args.sandbox],
                            dispatcher_args=["--heartbeat-timeout", str(args.heartbeat_timeout),
                                             "--max-attempts", str(args.max_attempts)])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    follower = None
    try:
        # Read before the dispatcher starts: runners may register before we could ask it for its last event.
        after = last_seq(state.db)
        await supervisor.start()
        control = Control.for_state(state)
        follower = asyncio.ensure_future(follow_events(control, out, after, include_output=args.output))
        for event in early:
            on_event(*event)
        await stop.wait()
    finally:
        if follower is not None:
            follower.cancel()
        await asyncio.gather(*(t for t in [follower] if t), *notices, return_exceptions=True)
        if control is not None:
            await control.close()
        await supervisor.stop()


async def _notify(control: Control, kind: p.NoticeKind, name: str, message: str) -> None:
    try:
        await control.notice(kind, name, message)
    except (NoDispatcher, OSError, ConnectionError):
        pass  # the dispatcher stayed down; the supervisor's own log has it


async def follow_events(control: Control, out: "Printer", last: int, include_output: bool = False) -> None:
    """Print events after ``last``; after a dropped connection, resume after the last one seen."""

    async def follow() -> bool:
        nonlocal last
        answered = False
        try:
            async for msg in control.subscribe(after_seq=last, output=include_output):
                answered = True
                if isinstance(msg, p.Event):
                    last = msg.seq
                out.message(msg)
        except (NoDispatcher, OSError, ConnectionError, p.ProtocolError):
            pass
        return answered

    await p.reconnect(follow, first=RETRY_DELAY, cap=RETRY_DELAY)


class Printer:
    """Events as JSON lines, or as short human lines."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self._cleaners: dict[int, StreamCleaner] = {}  # job id -> its output's cleaner, while it runs

    def message(self, msg: p.Event | p.JobOutput) -> None:
        # Test output, names and subjects are untrusted: never written to the terminal raw.
        if self.as_json:
            self._emit(p.to_json(msg))
        elif isinstance(msg, p.JobOutput):
            sys.stdout.write(self._cleaners.setdefault(msg.job_id, StreamCleaner()).feed(msg.data))
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

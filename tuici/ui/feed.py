"""Keeps the control center's picture of the engine current, across dispatcher restarts.

On every (re)connect: a full status snapshot, then every event after the last one
received. The snapshot catches what only memory knew (runners that never came back
after a dispatcher restart); resuming after the last event number means no event is
missed and none is applied twice. Before the first connect, the first page of the status
(the newest jobs) is delivered, and drawn before the whole status is asked for.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable, Union

from .. import wire as p
from .backend import CONNECTION_ERRORS, Backend, BackendError

RETRY_DELAY = 0.2  # not backed off: the supervisor paces a dispatcher's restarts
HEARTBEAT_POLL = 2.0


@dataclass(frozen=True)
class Connection:
    state: str  # connecting, connected, reconnecting, refused
    reason: str = ""  # why it was refused


@dataclass(frozen=True)
class Snapshot:
    status: p.StatusReply
    partial: bool = False  # the first page only: the newest jobs, shown until the whole status replaces it


@dataclass(frozen=True)
class Heartbeats:
    runners: list[p.RunnerInfo]


Update = Union[p.Event, Snapshot, Heartbeats, Connection]


async def _at_once() -> None:
    pass


class Feed:
    def __init__(self, backend: Backend, deliver: Callable[[Update], None],
                 drawn: Callable[[], Awaitable[None]] = _at_once):
        self.backend = backend
        self.deliver = deliver
        self.drawn = drawn  # returns once what was delivered is on the screen
        self.cursor: int | None = None  # the last event number received

    async def first_page(self) -> None:
        """Deliver the backend's first page, if it has one, and return once it is drawn: call it before ``run``
        (the whole status, decoded and loaded meanwhile, would hold the first frame up), while the engine starts
        (a page read from the store comes before the dispatcher serves)."""
        page = await self.backend.first_page()
        if page is not None:
            self.deliver(Snapshot(page, partial=True))
            await self.drawn()

    async def run(self) -> None:
        """Follow the engine until cancelled, or until it refuses us for good."""
        self.deliver(Connection("connecting"))
        heartbeats = asyncio.ensure_future(self._poll_heartbeats())
        try:
            await p.reconnect(self._follow, first=RETRY_DELAY, cap=RETRY_DELAY)
        except BackendError as exc:  # a permanent refusal: asking again cannot help
            self.deliver(Connection("refused", str(exc)))
        finally:
            heartbeats.cancel()
            await asyncio.gather(heartbeats, return_exceptions=True)

    async def _follow(self) -> bool:
        """A snapshot, then events until the connection drops; whether the engine answered at all."""
        answered = False
        try:
            status = await self.backend.status()
            answered = True
            self.deliver(Snapshot(status))
            if self.cursor is None:
                self.cursor = status.last_seq  # the snapshot holds everything before it
            self.deliver(Connection("connected"))
            async for message in self.backend.events(self.cursor):
                if isinstance(message, p.StatusReply):  # events after the cursor were deleted: the state now
                    self.cursor = message.last_seq
                    self.deliver(Snapshot(message))
                else:
                    self.cursor = message.seq
                    self.deliver(message)
        except BackendError as exc:
            if exc.permanent:
                raise
        except CONNECTION_ERRORS:
            pass
        self.deliver(Connection("reconnecting"))
        return answered

    async def _poll_heartbeats(self) -> None:
        """Runners' heartbeats publish no events: ask for them now and then, to show their age."""
        while True:
            await asyncio.sleep(HEARTBEAT_POLL)
            try:
                status = await self.backend.status(limit=1)
            except (BackendError, *CONNECTION_ERRORS):
                continue
            self.deliver(Heartbeats(status.runners))

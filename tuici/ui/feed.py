"""Keeps the control center's picture of the engine current, across dispatcher restarts.

On every (re)connect: a full status snapshot, then every event after the last one
received. The snapshot catches what only memory knew (runners that never came back
after a dispatcher restart); resuming after the last event number means no event is
missed and none is applied twice.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Union

from .. import protocol as p
from .backend import CONNECTION_ERRORS, Backend, BackendError

RETRY_DELAY = 0.2
HEARTBEAT_POLL = 2.0


@dataclass(frozen=True)
class Connection:
    state: str  # connecting, connected, reconnecting, refused
    reason: str = ""  # why it was refused


@dataclass(frozen=True)
class Snapshot:
    status: p.StatusReply


@dataclass(frozen=True)
class Heartbeats:
    runners: list[p.RunnerInfo]


Update = Union[p.Event, Snapshot, Heartbeats, Connection]


class Feed:
    def __init__(self, backend: Backend, deliver: Callable[[Update], None]):
        self.backend = backend
        self.deliver = deliver
        self.cursor: int | None = None  # the last event number received

    async def run(self) -> None:
        """Follow the engine until cancelled."""
        self.deliver(Connection("connecting"))
        heartbeats = asyncio.ensure_future(self._poll_heartbeats())
        try:
            while True:
                try:
                    await self._follow()
                except BackendError as exc:
                    if exc.permanent:
                        self.deliver(Connection("refused", str(exc)))
                        return
                except CONNECTION_ERRORS:
                    pass
                self.deliver(Connection("reconnecting"))
                await asyncio.sleep(RETRY_DELAY)
        finally:
            heartbeats.cancel()
            await asyncio.gather(heartbeats, return_exceptions=True)

    async def _follow(self) -> None:
        status = await self.backend.status()
        self.deliver(Snapshot(status))
        if self.cursor is None:
            self.cursor = status.last_seq  # the snapshot holds everything before it
        self.deliver(Connection("connected"))
        async for event in self.backend.events(self.cursor):
            self.cursor = event.seq
            self.deliver(event)

    async def _poll_heartbeats(self) -> None:
        """Runners' heartbeats publish no events: ask for them now and then, to show their age."""
        while True:
            await asyncio.sleep(HEARTBEAT_POLL)
            try:
                status = await self.backend.status(limit=1)
            except (BackendError, *CONNECTION_ERRORS):
                continue
            self.deliver(Heartbeats(status.runners))

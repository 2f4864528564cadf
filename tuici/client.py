"""The asyncio control client: how `serve` and the control center talk to a dispatcher.

The one-shot commands use ``query.Query``, its blocking counterpart.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from . import protocol as p
from .query import NoDispatcher, endpoint_for
from .statedir import StateDir

__all__ = ["Control", "NoDispatcher"]


class Control:
    """Requests over one control connection; ``subscribe`` takes a connection of its own."""

    def __init__(self, endpoint: p.Endpoint):
        self.endpoint = endpoint
        self._conn: p.Connection | None = None
        self._lock = asyncio.Lock()  # one request at a time on the shared connection

    @classmethod
    def for_state(cls, state: StateDir, token: str | None = None) -> "Control":
        return cls(endpoint_for(state, token))

    async def _connect(self) -> p.Connection:
        try:
            conn, _ = await p.handshake(self.endpoint, p.Hello(role="control", token=self.endpoint.token))
        except (OSError, TimeoutError) as exc:
            raise NoDispatcher(f"no dispatcher answers at {self.endpoint} ({exc})") from None
        return conn

    async def request(self, msg: p.Message) -> p.Message:
        async with self._lock:
            if self._conn is None:
                self._conn = await self._connect()
            try:
                return await self._conn.request(msg)
            except (OSError, ConnectionError):
                await self.close()
                raise

    async def status(self, limit: int = 0) -> p.StatusReply:
        reply = await self.request(p.StatusRequest(limit=limit))
        assert isinstance(reply, p.StatusReply)
        return reply

    async def rerun(self, commit: str) -> p.Reply:
        return await self.request(p.RerunRequest(commit=commit))

    async def cancel(self, job_id: int) -> p.Reply:
        return await self.request(p.CancelRequest(job_id=job_id))

    async def notice(self, kind: str, name: str, message: str, patience: float = 30.0) -> None:
        """Have the dispatcher publish a supervisor event; waits (a while) for one that is restarting."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            try:
                await self.request(p.Notice(kind=kind, name=name, message=message))
                return
            except (NoDispatcher, OSError, ConnectionError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def subscribe(self, after_seq: int = 0, output: bool = False) -> AsyncIterator[p.Event | p.JobOutput]:
        """Events after ``after_seq`` (and live output if asked), until the connection drops."""
        conn = await self._connect()
        try:
            await conn.send(p.Subscribe(after_seq=after_seq, output=output))
            while (msg := await conn.recv()) is not None:
                if isinstance(msg, (p.Event, p.JobOutput)):
                    yield msg
        finally:
            await conn.close()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

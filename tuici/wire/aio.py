"""The asyncio side of the wire: connections, the handshake, reconnecting, and the control client that `serve`
and the control center use (the one-shot commands use ``blocking.Query``, which needs no event loop)."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import AsyncIterator, Awaitable, Callable

from ..errors import ComponentError
from ..statedir import StateDir
from .addresses import Address, Endpoint, Tour, UnixAddress, endpoint_for, notice_dead_peers, socket_path
from .errors import NoDispatcher, ProtocolError, RefusedError
from .framing import HEADER, MAX_FRAME, body_length, decode, encode, expect
from .messages import (
    CancelRequest,
    Event,
    Hello,
    JobOutput,
    LogRequest,
    Message,
    Notice,
    NoticeKind,
    Refused,
    Reply,
    ReportedCommit,
    RerunRequest,
    StatusReply,
    StatusRequest,
    Subscribe,
    TryRequest,
    Welcome,
)

READ_LIMIT = 256 * 1024  # asyncio pauses a socket at 2x this; readexactly() still takes whole frames


async def read_message(reader: asyncio.StreamReader, max_size: int = MAX_FRAME) -> Message | None:
    """The next message (of at most ``max_size`` bytes), or None at a clean end of stream."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header") from None
        return None
    length = body_length(header, max_size)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed inside a frame") from None
    return decode(body)


class Connection:
    """A framed, typed message stream over one asyncio socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, endpoint: Endpoint, timeout: float = 5.0, address: Address | None = None) -> "Connection":
        """Connect to ``address`` (default: the endpoint's preferred one)."""
        address = address or endpoint.address
        if isinstance(address, UnixAddress):
            with socket_path(address.path) as path:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=READ_LIMIT), timeout)
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port, limit=READ_LIMIT, ssl=endpoint.tls,
                                        server_hostname=address.host if endpoint.tls else None),
                timeout,
            )
            notice_dead_peers(writer.get_extra_info("socket"))
        return cls(reader, writer)

    @property
    def source(self) -> str:
        """The peer's address without its port, or ``local`` over a Unix socket."""
        peer = self.writer.get_extra_info("peername")
        return peer[0] if isinstance(peer, tuple) else "local"

    @property
    def peer(self) -> str:
        peer = self.writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "local"

    async def recv(self, max_size: int = MAX_FRAME) -> Message | None:
        return await read_message(self.reader, max_size)

    async def send(self, msg: Message) -> None:
        self.writer.write(encode(msg))
        await self.writer.drain()

    def send_nowait(self, msg: Message) -> None:
        self.writer.write(encode(msg))

    async def request(self, msg: Message) -> Message:
        """Send ``msg`` and return the reply; the peer closing instead is an error."""
        await self.send(msg)
        reply = await self.recv()
        if reply is None:
            raise ConnectionError("dispatcher closed the connection")
        if isinstance(reply, Refused):
            raise RefusedError(reply.reason, reply.permanent, reply.active)
        return reply

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def _handshake_at(endpoint: Endpoint, address: Address, hello: Hello,
                        timeout: float) -> tuple[Connection, Welcome]:
    conn = await Connection.open(endpoint, timeout, address)
    try:
        reply = await asyncio.wait_for(conn.request(hello), timeout)
        return conn, expect(reply, Welcome)
    except BaseException:
        await conn.close()
        raise


async def handshake(endpoint: Endpoint, hello: Hello, timeout: float = 5.0) -> tuple[Connection, Welcome]:
    """Connect and authenticate, to the active dispatcher of the endpoint's addresses (in turn, the last one that
    answered first; a standby's pointer to the active one followed); the address that took us is preferred from
    then on. Raises the last address's error: RefusedError with the dispatcher's reason, or OSError."""
    tour = Tour(endpoint)
    last: BaseException | None = None
    while (address := tour.next()) is not None:
        try:
            conn, welcome = await _handshake_at(endpoint, address, hello, timeout)
        except RefusedError as exc:
            last = exc
            if exc.permanent:
                raise
            if exc.active:
                tour.follow(exc.active)
            continue
        except (OSError, asyncio.TimeoutError) as exc:
            last = exc
            continue
        endpoint.prefer(address)
        return conn, welcome
    assert last is not None  # an endpoint has at least one address
    raise last


async def join(endpoint: Endpoint, hello: Hello, log: logging.Logger) -> tuple[Connection, Welcome] | None:
    """A component's handshake, tried again and again: None when the dispatcher cannot be reached or refused us
    for now (the reason logged); ``ComponentError`` when it refused us for good."""
    try:
        return await handshake(endpoint, hello)
    except RefusedError as exc:
        if exc.permanent:
            raise ComponentError(f"dispatcher refused us: {exc}") from None
        log.warning("dispatcher refused us: %s", exc)
    except (OSError, asyncio.TimeoutError, ProtocolError) as exc:
        log.info("cannot reach dispatcher at %s: %s", endpoint, exc)
    return None


async def reconnect(attempt: Callable[[], Awaitable[bool]], stopping: asyncio.Event | None = None,
                    first: float = 0.1, cap: float = 5.0) -> None:
    """Call ``attempt`` until ``stopping`` is set (for ever without one); an exception from it ends this.

    An attempt connects, serves the connection until it ends, and returns whether it connected at all. After one
    that did, the next comes within ``first``; after one that did not, after a wait that starts at ``first`` and
    doubles with each failure up to ``cap``. Each wait is drawn at random (from the upper half of that, after a
    failure), so that runners that lost the same dispatcher do not all come back at the same instant, and none
    waits longer than that: a runner holding a job must be back within the dispatcher's restart grace.
    """
    stopping = stopping or asyncio.Event()
    delay = first
    while not stopping.is_set():
        if await attempt():
            delay, wait = first, random.uniform(0, first)
        else:
            wait = random.uniform(delay / 2, delay)
            delay = min(delay * 2, cap)
        try:
            await asyncio.wait_for(stopping.wait(), wait)
        except asyncio.TimeoutError:
            pass


class Control:
    """Requests over one control connection; ``subscribe`` takes a connection of its own."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()  # one request at a time on the shared connection

    @classmethod
    def for_state(cls, state: StateDir, token: str | None = None) -> "Control":
        return cls(endpoint_for(state, token))

    async def _connect(self) -> Connection:
        try:
            conn, _ = await handshake(self.endpoint, Hello(role="control", token=self.endpoint.token))
        except (OSError, TimeoutError) as exc:
            raise NoDispatcher(f"no dispatcher answers at {self.endpoint} ({exc})") from None
        return conn

    async def request(self, msg: Message) -> Message:
        async with self._lock:
            if self._conn is None:
                self._conn = await self._connect()
            try:
                return await self._conn.request(msg)
            except (OSError, ConnectionError):
                await self.close()
                raise

    async def pieces(self, msg: Message) -> list[Message]:
        """As ``blocking.Query.pieces``: the whole answer to ``msg``, every piece of it."""
        async with self._lock:
            if self._conn is None:
                self._conn = await self._connect()
            try:
                answer = [await self._conn.request(msg)]
                while getattr(answer[-1], "more", False):
                    reply = await self._conn.recv()
                    if reply is None:
                        raise ConnectionError("dispatcher closed the connection")
                    answer.append(reply)
                return answer
            except (OSError, ConnectionError):
                await self.close()
                raise

    async def status(self, limit: int = 0) -> StatusReply:
        return expect(await self.request(StatusRequest(limit=limit)), StatusReply)

    async def rerun(self, commit: str) -> Reply:
        return expect(await self.request(RerunRequest(commit=commit)), Reply)

    async def cancel(self, job_id: int) -> Reply:
        return expect(await self.request(CancelRequest(job_id=job_id)), Reply)

    async def try_commit(self, commit: ReportedCommit) -> Reply:
        return expect(await self.request(TryRequest(commit=commit)), Reply)

    async def notice(self, kind: NoticeKind, name: str, message: str, patience: float = 30.0) -> None:
        """Have the dispatcher publish a supervisor event; waits (a while) for one that is restarting."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            try:
                await self.request(Notice(kind=kind, name=name, message=message))
                return
            except (NoDispatcher, OSError, ConnectionError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def subscribe(self, after_seq: int = 0,
                        output: bool = False) -> AsyncIterator[Event | JobOutput | StatusReply]:
        """Events after ``after_seq`` (and live output if asked), until the connection drops. When retention
        deleted some of those events, a ``StatusReply`` comes first: the state as it is, the events after its
        ``last_seq`` follow."""
        conn = await self._connect()
        try:
            await conn.send(Subscribe(after_seq=after_seq, output=output))
            while (msg := await conn.recv()) is not None:
                if isinstance(msg, (Event, JobOutput, StatusReply)):
                    yield msg
        finally:
            await conn.close()

    async def log(self, job_id: int, offset: int = 0, follow: bool = False) -> AsyncIterator[JobOutput | Reply]:
        """The job's output from ``offset`` (see ``LogRequest``), ending with the reply that carries the job; a
        connection of its own. ``ConnectionError`` if it drops before that reply."""
        conn = await self._connect()
        try:
            await conn.send(LogRequest(job_id=job_id, offset=offset, follow=follow))
            while (msg := await conn.recv()) is not None:
                if isinstance(msg, Reply):
                    yield msg
                    return
                yield expect(msg, JobOutput)
            raise ConnectionError("dispatcher closed the connection")
        finally:
            await conn.close()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

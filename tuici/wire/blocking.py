"""Requests to a dispatcher over a blocking socket, for the one-shot commands (status, log, rerun, cancel, wait,
tests, history, flaky).

They need no event loop, and without asyncio's import a command answers ~30 ms sooner. ``aio.Control``
is the asyncio counterpart, for ``serve`` and the control center.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

from .addresses import Address, Endpoint, TcpAddress, Tour, connect
from .errors import NoDispatcher, ProtocolError, RefusedError
from .framing import HEADER, MAX_FRAME, body_length, decode, encode, expect
from .messages import (
    Event,
    Hello,
    JobOutput,
    LogRequest,
    Message,
    Refused,
    Reply,
    StatusJson,
    StatusReply,
    StatusRequest,
    Subscribe,
    Welcome,
)


def read_message_blocking(stream: BinaryIO, max_size: int = MAX_FRAME) -> Message | None:
    """As ``aio.read_message``, from a blocking binary stream (a socket's ``makefile("rb")``)."""
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise ProtocolError("connection closed inside a frame header")
    length = body_length(header, max_size)
    body = stream.read(length)
    if len(body) < length:
        raise ProtocolError("connection closed inside a frame")
    return decode(body)


class Query:
    """One control connection; ``request`` sends a message and returns the dispatcher's reply."""

    def __init__(self, endpoint: Endpoint, timeout: float = 5.0):
        """Join the active dispatcher of the endpoint's addresses, as ``aio.handshake`` does."""
        tour = Tour(endpoint)
        problem: str | BaseException = "no address"
        while (address := tour.next()) is not None:
            try:
                self._join(endpoint, address, timeout)
            except RefusedError as exc:
                if exc.permanent or not exc.active:
                    raise
                problem = exc
                tour.follow(exc.active)
                continue
            except OSError as exc:  # a timeout included
                problem = exc
                continue
            endpoint.prefer(address)
            self._sock.settimeout(None)  # as long as the dispatcher takes, like Control's requests
            return
        raise NoDispatcher(f"no dispatcher answers at {endpoint} ({problem})")

    def _join(self, endpoint: Endpoint, address: Address, timeout: float) -> None:
        sock = connect(address, timeout)
        try:
            if endpoint.tls is not None and isinstance(address, TcpAddress):
                sock = endpoint.tls.wrap_socket(sock, server_hostname=address.host)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._stream = sock.makefile("rb")
        try:
            expect(self.request(Hello(role="control", token=endpoint.token)), Welcome)
        except BaseException:
            self.close()
            raise

    def request(self, msg: Message) -> Message:
        self._sock.sendall(encode(msg))
        return self._receive()

    def _receive(self) -> Message:
        reply = read_message_blocking(self._stream)
        if reply is None:
            raise ConnectionError("dispatcher closed the connection")
        if isinstance(reply, Refused):
            raise RefusedError(reply.reason, reply.permanent, reply.active)
        return reply

    def pieces(self, msg: Message) -> Iterator[Message]:
        """Send ``msg`` and yield its answer as it comes, piece after piece while each says there is ``more``
        (an answer of one piece, such as a ``Reply`` saying why not, is the only one)."""
        reply = self.request(msg)
        yield reply
        while getattr(reply, "more", False):
            reply = self._receive()
            yield reply

    def status(self, limit: int = 0) -> StatusReply:
        return expect(self.request(StatusRequest(limit=limit)), StatusReply)

    def status_json(self, out: BinaryIO) -> None:
        """Write the status to ``out`` as the dispatcher encoded it (see ``StatusJson``)."""
        reply = expect(self.request(StatusRequest(as_json=True)), StatusJson)
        out.write(reply.data)
        while reply.more:
            reply = expect(self._receive(), StatusJson)
            out.write(reply.data)

    def log(self, job_id: int, offset: int = 0, follow: bool = False) -> Iterator[JobOutput | Reply]:
        """The job's output from ``offset`` (see ``LogRequest``), ending with the reply that carries the job;
        the connection's last request."""
        self._sock.sendall(encode(LogRequest(job_id=job_id, offset=offset, follow=follow)))
        while True:
            msg = self._receive()
            if isinstance(msg, Reply):
                yield msg
                return
            yield expect(msg, JobOutput)

    def events(self, after_seq: int) -> Iterator[Event]:
        """Every event after ``after_seq``, then live ones, until the connection drops (``ConnectionError``);
        the connection's last request."""
        self._sock.sendall(encode(Subscribe(after_seq=after_seq)))
        while True:
            msg = self._receive()
            if isinstance(msg, Event):
                yield msg

    def settimeout(self, seconds: float | None) -> None:
        """How long a read may wait from now on (``TimeoutError`` after it); None: as long as it takes."""
        self._sock.settimeout(seconds)

    def close(self) -> None:
        self._stream.close()
        self._sock.close()

    def __enter__(self) -> "Query":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

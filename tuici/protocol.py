"""The wire format: every message tuici components exchange, typed and validated here.

A frame is a 4-byte big-endian length followed by a msgpack body of at most
``MAX_FRAME`` bytes. The body decodes to exactly one of the ``Message`` structs
(tagged by their ``type`` field); anything else raises ``ProtocolError`` and the
receiving side closes that one connection.

asyncio and ssl are imported where they are used: the one-shot commands (status, log, rerun, cancel) use a
blocking socket and start ~30 ms sooner without them.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, BinaryIO, Iterator, Literal, Union

import msgspec

if TYPE_CHECKING:
    import asyncio
    import ssl

PROTOCOL_VERSION = 1
MAX_FRAME = 16 * 1024 * 1024
MAX_HELLO = 64 * 1024  # before the token is checked, a peer may not make us buffer more than this
OUTPUT_CHUNK = 1024 * 1024
READ_LIMIT = 256 * 1024  # asyncio pauses a socket at 2x this; readexactly() still takes whole frames
BACKLOG = 1024  # connections the kernel queues per listening socket until they are accepted (somaxconn caps it)

_HEADER = struct.Struct(">I")

Role = Literal["runner", "observer", "control"]
JobState = Literal["queued", "running", "passed", "failed", "error", "cancelled"]
RunnerState = Literal["idle", "busy", "lost"]
FINAL_STATES = frozenset({"passed", "failed", "error", "cancelled"})

# A full object id (SHA-1 or SHA-256): never an option or a path. Checked where a sha comes in: in what an
# observer reports (the dispatcher queues it) and in what a runner is told to check out. Control clients only
# show what the dispatcher checked on the way in, and skip the check (a third of decoding 10,000 jobs).
# Anchored with \A and \Z: `$` would also match before a trailing newline.
Sha = Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{40}([0-9a-f]{24})?\Z")]
# As git allows it: no control characters (a NUL could not even go into a test command's environment).
Branch = Annotated[str, msgspec.Meta(pattern=r"\A[^\x00-\x1f\x7f]+\Z")]
# Unix seconds, finite: SQLite would store a NaN as NULL and refuse the whole batch it is in.
Timestamp = Annotated[float, msgspec.Meta(ge=-1e11, le=1e11)]
Offset = Annotated[int, msgspec.Meta(ge=0)]


class ProtocolError(Exception):
    """A peer sent something that is not a valid frame or message."""


class RefusedError(Exception):
    """The dispatcher answered with ``Refused``: a wrong token, an old version, a taken name."""

    @property
    def permanent(self) -> bool:
        """Whether retrying cannot help (as opposed to, say, a name still held by a lost runner)."""
        return "token" in str(self) or "version" in str(self)


class _Msg(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    pass


# ----------------------------------------------------------------- shared records


class CommitInfo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    sha: str
    branch: str
    author: str = ""
    subject: str = ""
    time: Timestamp = 0.0  # committer time


class ReportedCommit(CommitInfo):
    """A commit as an observer reports it: its sha and branch are checked (see ``Sha``)."""

    sha: Sha
    branch: Branch


class JobInfo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    id: int
    commit: str
    branch: str
    state: JobState
    runner: str | None = None
    attempts: int = 0
    exit_code: int | None = None
    duration_s: float | None = None
    passed: int | None = None
    failed: int | None = None
    skipped: int | None = None
    error: str = ""
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    log_size: int = 0
    priority: int = 0  # dispatch order: the highest first, then the lowest id; a rerun goes above every other
    env: str = ""  # the key of the environment ``setup`` made (none without setup)
    env_reused: bool = False  # whether that environment was reused rather than made for this job


class RunnerInfo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    name: str
    host: str
    pid: int
    state: RunnerState
    job: int | None = None
    jobs_done: int = 0
    last_heartbeat: float = 0.0


class AttemptInfo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    job_id: int
    attempt: int
    runner: str
    started_at: float
    ended_at: float | None = None
    outcome: str = ""  # passed/failed/error/cancelled/lost/timeout
    reason: str = ""


class HeldJob(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A job a reconnecting runner still owns: running, or finished with an undelivered result."""

    job_id: int
    attempt: int
    finished: bool = False


# ----------------------------------------------------------------- handshake


class Hello(_Msg, tag="hello"):
    role: Role
    token: str
    version: int = PROTOCOL_VERSION
    name: str = ""
    host: str = ""
    pid: int = 0
    repo_url: str = ""
    held: list[HeldJob] = []


class Welcome(_Msg, tag="welcome"):
    version: int
    repo_url: str = ""
    tips: dict[str, str] = {}  # observer: branch -> last reported tip
    log_offsets: dict[int, int] = {}  # runner: held job id -> bytes already stored
    name: str = ""  # runner: the name the dispatcher registered


class Refused(_Msg, tag="refused"):
    reason: str


# ----------------------------------------------------------------- observer


class CommitsSeen(_Msg, tag="commits"):
    branch: Branch
    tip: Sha
    commits: list[ReportedCommit]  # oldest first


class BranchGone(_Msg, tag="branch_gone"):
    branch: Branch


class TipsAck(_Msg, tag="tips_ack"):
    branch: str
    tip: str
    queued: int


# ----------------------------------------------------------------- runner


class Heartbeat(_Msg, tag="heartbeat"):
    pass


class Bye(_Msg, tag="bye"):
    """A runner leaving on purpose (as opposed to being lost)."""


class Assign(_Msg, tag="assign"):
    job_id: int
    attempt: int
    commit: Sha
    branch: Branch
    repo_url: str


class CancelJob(_Msg, tag="cancel_job"):
    job_id: int


class Output(_Msg, tag="output"):
    job_id: int
    attempt: int
    offset: Offset
    data: bytes


class JobResult(_Msg, tag="result"):
    job_id: int
    attempt: int
    exit_code: int | None
    duration_s: float
    log_size: int
    passed: int | None = None
    failed: int | None = None
    skipped: int | None = None
    error: str = ""  # set when tuici, not the tests, could not run the job
    cancelled: bool = False
    timed_out: bool = False
    env: str = ""
    env_reused: bool = False


class ResultAck(_Msg, tag="result_ack"):
    """The answer to a result; also sent unasked (``accepted=False``) when the dispatcher took the job back from
    a runner that did not end it in time after a cancel: either way the runner drops the job."""

    job_id: int
    attempt: int
    accepted: bool
    reason: str = ""


# ----------------------------------------------------------------- control


class Subscribe(_Msg, tag="subscribe"):
    after_seq: int = 0
    output: bool = False


class Event(_Msg, tag="event"):
    seq: int
    ts: float
    kind: str  # commit.seen, job.queued/started/finished/requeued, runner.joined/lost/left, process.*
    commit: CommitInfo | None = None
    job: JobInfo | None = None
    runner: RunnerInfo | None = None
    message: str = ""


class JobOutput(_Msg, tag="job_output"):
    """Live output for subscribers that asked for it; not sequenced: the stored log is the record."""

    job_id: int
    offset: Offset
    data: bytes


class StatusRequest(_Msg, tag="status"):
    limit: int = 0  # newest N jobs; 0 for all
    as_json: bool = False  # answer with StatusJson chunks instead of one StatusReply


class StatusJson(_Msg, tag="status_json"):
    """A piece of the status as the JSON document `tuici status --json` prints (a StatusReply's fields).

    The dispatcher encodes it once, and the client writes it out undecoded: on 10,000 jobs that saves
    decoding and re-encoding 5 MB. Sent in pieces of ``OUTPUT_CHUNK``, so a long history has no frame limit.
    """

    data: bytes
    more: bool = False  # another piece follows


class StatusReply(_Msg, tag="status_reply"):
    repo_url: str
    last_seq: int
    commits: list[CommitInfo]
    jobs: list[JobInfo]
    runners: list[RunnerInfo]
    attempts: list[AttemptInfo] = []


class RerunRequest(_Msg, tag="rerun"):
    commit: str  # full sha or unique prefix


class CancelRequest(_Msg, tag="cancel"):
    job_id: int


class Notice(_Msg, tag="notice"):
    """A supervisor telling the dispatcher what happened to a process, to publish as an event."""

    kind: str  # process.started/exited/restarted/stopped
    name: str
    message: str = ""


class Reply(_Msg, tag="reply"):
    ok: bool
    message: str = ""
    job: JobInfo | None = None


Message = Union[
    Hello, Welcome, Refused,
    CommitsSeen, BranchGone, TipsAck,
    Heartbeat, Bye, Assign, CancelJob, Output, JobResult, ResultAck,
    Subscribe, Event, JobOutput, StatusRequest, StatusReply, StatusJson, RerunRequest, CancelRequest, Notice, Reply,
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)
_json_encoder = msgspec.json.Encoder()


def encode(msg: Message) -> bytes:
    """One complete frame for ``msg``."""
    body = _encoder.encode(msg)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(body)) + body


def decode(body: bytes) -> Message:
    """The message in one frame body; ``ProtocolError`` names what is wrong with it."""
    try:
        return _decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"invalid message: {exc}") from None


def to_json_bytes(obj: msgspec.Struct) -> bytes:
    return _json_encoder.encode(obj)


def to_json(obj: msgspec.Struct) -> str:
    return _json_encoder.encode(obj).decode()



def _body_length(header: bytes, max_size: int) -> int:
    (length,) = _HEADER.unpack(header)
    if length > max_size:
        raise ProtocolError(f"frame of {length} bytes exceeds the {max_size}-byte limit")
    return length


async def read_message(reader: asyncio.StreamReader, max_size: int = MAX_FRAME) -> Message | None:
    """The next message (of at most ``max_size`` bytes), or None at a clean end of stream."""
    import asyncio

    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header") from None
        return None
    length = _body_length(header, max_size)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed inside a frame") from None
    return decode(body)


def read_message_blocking(stream: BinaryIO, max_size: int = MAX_FRAME) -> Message | None:
    """As ``read_message``, from a blocking binary stream (a socket's ``makefile("rb")``)."""
    header = stream.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise ProtocolError("connection closed inside a frame header")
    length = _body_length(header, max_size)
    body = stream.read(length)
    if len(body) < length:
        raise ProtocolError("connection closed inside a frame")
    return decode(body)


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UnixAddress:
    """A Unix socket, for components on the dispatcher's machine: it is in the state dir, which the sandbox hides
    from the code under test (that shares 127.0.0.1 with everything local)."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


Address = Union[TcpAddress, UnixAddress]


@dataclass(frozen=True)
class Endpoint:
    """Where a dispatcher is and how to join it."""

    address: Address
    token: str
    tls: ssl.SSLContext | None = None  # over TCP, verifies the dispatcher's certificate when set

    def __str__(self) -> str:
        return str(self.address)


def client_tls(cafile: str | None) -> ssl.SSLContext | None:
    if not cafile:
        return None
    import ssl

    return ssl.create_default_context(cafile=cafile)


def server_tls(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    if not certfile:
        return None
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class Connection:
    """A framed, typed message stream over one asyncio socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, endpoint: Endpoint, timeout: float = 5.0) -> "Connection":
        import asyncio

        address = endpoint.address
        if isinstance(address, UnixAddress):
            with socket_path(address.path) as path:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=READ_LIMIT), timeout)
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port, limit=READ_LIMIT, ssl=endpoint.tls,
                                        server_hostname=address.host if endpoint.tls else None),
                timeout,
            )
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
            raise RefusedError(reply.reason)
        return reply

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def address_of(sock: socket.socket) -> TcpAddress:
    """A listening TCP socket's address."""
    host, port = sock.getsockname()[:2]
    return TcpAddress(host, port)


def parse_address(text: str) -> Address:
    """``HOST:PORT``, ``[v6]:PORT`` or ``unix:/ABSOLUTE/PATH`` into an address, with a clear error."""
    if text.startswith("unix:"):
        if not os.path.isabs(text[5:]):
            raise ValueError(f"address {text!r} is not unix:/ABSOLUTE/PATH")
        return UnixAddress(text[5:])
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {text!r} is not HOST:PORT or unix:/ABSOLUTE/PATH")
    return TcpAddress(host.strip("[]"), int(port))


SUN_PATH_MAX = 107  # the bytes of a path a Unix socket address holds (Linux: 108, with the NUL)


@contextmanager
def socket_path(path: str) -> Iterator[str]:
    """``path`` as bind() and connect() take it: itself, or, when it is longer than a socket address holds (a
    repository deep in a temp dir), the same file through a descriptor of its directory: /proc/self/fd/N/NAME
    (Linux). The socket stays in the state dir, where the sandbox hides it; a short path elsewhere (/tmp) would
    not be hidden."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield path
        return
    folder, name = os.path.split(path)
    fd = os.open(folder, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def _unix_listener(path: str) -> socket.socket:
    """A socket listening at ``path`` that only its owner may connect to. A socket file left there by a dispatcher
    that is gone is replaced; one that still answers is not (``OSError`` EADDRINUSE)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_path(path) as short:
            try:
                sock.bind(short)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or _answers(short):
                    raise
                os.unlink(short)
                sock.bind(short)
            os.chmod(short, 0o600)  # before listen(): until then nobody can connect
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _answers(path: str) -> bool:
    """Whether something listens at the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:  # refused: nobody listens there any more
            return False
    return True


def remove_socket_file(path: str) -> None:
    """Remove the file of a Unix socket we bound, once we stop listening: left behind, it would look served."""
    with socket_path(path) as short:
        try:
            os.unlink(short)
        except FileNotFoundError:
            pass


def _tcp_listener(address: TcpAddress) -> socket.socket:
    """A socket listening at ``address`` (IPv4 or IPv6, as the host resolves)."""
    family = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((address.host, address.port), family=family, backlog=BACKLOG)


def listeners(path: str, tcp: TcpAddress | None) -> list[socket.socket]:
    """The dispatcher's listening sockets: its Unix socket at ``path``, and a TCP one at ``tcp`` if given. If one
    cannot be bound, none stays bound, and the ``OSError`` names its address (as ``filename``)."""
    socks: list[socket.socket] = []
    try:
        for address in [UnixAddress(path), *([tcp] if tcp else [])]:
            try:
                socks.append(_unix_listener(path) if isinstance(address, UnixAddress) else _tcp_listener(address))
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror or str(exc), str(address)) from None
    except BaseException:
        if socks:
            remove_socket_file(path)
        for sock in socks:
            sock.close()
        raise
    return socks


def connect(address: Address, timeout: float) -> socket.socket:
    """A blocking socket connected to ``address`` (TLS, over TCP, is the caller's to add)."""
    if isinstance(address, TcpAddress):
        return socket.create_connection((address.host, address.port), timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with socket_path(address.path) as path:
            sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


async def handshake(endpoint: Endpoint, hello: Hello, timeout: float = 5.0) -> tuple[Connection, Welcome]:
    """Connect and authenticate; raises RefusedError with the dispatcher's reason."""
    import asyncio

    conn = await Connection.open(endpoint, timeout)
    try:
        reply = await asyncio.wait_for(conn.request(hello), timeout)
    except BaseException:
        await conn.close()
        raise
    if not isinstance(reply, Welcome):
        await conn.close()
        raise ProtocolError(f"expected welcome, got {type(reply).__name__}")
    return conn, reply

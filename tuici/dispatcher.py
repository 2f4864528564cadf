"""The dispatcher: a socket server that owns the job queue.

State lives in memory for speed and is written through to the store in batches;
events are published to subscribers only once the batch that holds them is durable,
so a subscriber never sees something a crash could take back.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import heapq
import itertools
import hmac
import logging
import os
import socket
import ssl
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import msgspec

from . import wire as p
from .statedir import StateDir
from .store import Batch, Store

log = logging.getLogger("tuici.dispatcher")

RING_SIZE = 10_000
OUTPUT_BUFFER = 4 * 1024 * 1024  # live output bytes held per subscriber; past it, chunks are dropped
HELLO_TIMEOUT = 5.0  # seconds a new connection has to say hello (and over TLS, to shake hands first)
# A peer with the token says hello as soon as it connects: it can do with less time from an address past its
# budget of failed handshakes, and while over MAX_PENDING connections (of one listening socket) wait for theirs.
HELLO_TIMEOUT_SHORT = 1.0
MAX_PENDING = 256
CANCEL_GRACE = 10.0  # seconds a runner has to end a cancelled job before the dispatcher takes the job back


@dataclass
class RunnerSession:
    info: p.RunnerInfo
    conn: p.Connection | None
    last_seen: float
    idle_since: float = 0.0
    attempt: int = 0
    taken_back: tuple[int, int] | None = None  # (job, attempt) taken from it after a cancel: late output is dropped


@dataclass(eq=False)
class Subscriber:
    conn: p.Connection
    cursor: int
    output: bool
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    chunks: deque = field(default_factory=deque)
    chunk_bytes: int = 0

    def offer(self, chunk: p.JobOutput) -> None:
        """Queue live output unless this subscriber is too far behind (the stored log has it all)."""
        if self.chunk_bytes + len(chunk.data) <= OUTPUT_BUFFER:
            self.chunks.append(chunk)
            self.chunk_bytes += len(chunk.data)
            self.wake.set()


class AlreadyRunning(Exception):
    pass


MAX_TRACKED_ADDRESSES = 10_000


def _remember(table: OrderedDict, key: str, value) -> None:
    """Put key last (the least recently seen first); past the cap, the least recently seen goes. Memory stays
    bounded, and a flood from many addresses cannot reset the bucket of one that keeps trying."""
    table[key] = value
    table.move_to_end(key)
    if len(table) > MAX_TRACKED_ADDRESSES:
        table.popitem(last=False)


class RateLimiter:
    """Failed handshakes per source address, as a token bucket: a connection that ends without a valid hello
    costs a token, a wrong token ``penalty`` tokens.

    It refuses nobody: everything local shares 127.0.0.1, so refusing an address would lock out the peers that
    share it with a flood, and what a peer does once it has shown the token is not limited either (the token
    lets it cancel, rerun and take every job anyway, and never reaches the code under test). An address with an
    empty bucket only gets less time to say hello (``HELLO_TIMEOUT_SHORT``), and a log line per 10 s."""

    def __init__(self, rate: float = 1.0, burst: float = 20.0, penalty: float = 5.0):
        self.rate, self.burst, self.penalty = rate, burst, penalty
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._logged: OrderedDict[str, float] = OrderedDict()

    def _level(self, ip: str) -> float:
        bucket = self._buckets.get(ip)
        if bucket is None:
            return self.burst
        level, at = bucket
        return min(self.burst, level + (time.monotonic() - at) * self.rate)

    def failed(self, ip: str, wrong_token: bool = False) -> None:
        cost = self.penalty if wrong_token else 1.0
        # In debt by one bucket at most: after a flood, the address is back within 2 * burst / rate seconds.
        _remember(self._buckets, ip, (max(-self.burst, self._level(ip) - cost), time.monotonic()))

    def failing(self, ip: str) -> bool:
        """Whether the address has used up its budget of failed handshakes."""
        return self._level(ip) < 1.0

    def should_log(self, ip: str) -> bool:
        """Every failure within the budget; past it, one line every 10 s, so a flood cannot fill the disk."""
        if not self.failing(ip):
            return True
        now = time.monotonic()
        if now - self._logged.get(ip, -10.0) < 10.0:
            return False
        _remember(self._logged, ip, now)
        return True


@dataclass(eq=False)
class Door:
    """One listening socket, and its connections yet to say hello: when each connected, oldest first."""

    tls: ssl.SSLContext | None
    pending: dict[p.Connection, float] = field(default_factory=dict)

    def admit(self, conn: p.Connection) -> None:
        """Count ``conn`` as waiting for its hello. Past ``MAX_PENDING``, drop those that have waited longer than
        ``HELLO_TIMEOUT_SHORT``: a flood that never says hello then holds what arrives in that time, not in
        HELLO_TIMEOUT, while a peer that says hello is read long before (and a burst of them is not dropped for
        being many). Over TLS, asyncio shakes hands before we see the connection: that wait is not counted."""
        now = time.monotonic()
        self.pending[conn] = now
        while len(self.pending) > MAX_PENDING:
            oldest, since = next(iter(self.pending.items()))
            if now - since <= HELLO_TIMEOUT_SHORT:
                return
            del self.pending[oldest]
            oldest.writer.transport.abort()  # its recv() in Dispatcher._hello ends


class JsonPrefix:
    """The JSON of the leading records of an insertion-ordered dict that are done changing (a commit always,
    a job once finished, an attempt once ended), kept between `status --json` requests: over 10,000 jobs the
    next request copies bytes instead of encoding them. Every change to a record goes through the dispatcher's
    ``_save_*`` (what the store is not told of, it would lose), which reports it here: a change to a record
    inside the prefix drops the prefix."""

    def __init__(self, done: Callable[[msgspec.Struct], bool]):
        self.done = done
        self.keys: set = set()
        self.parts: list[bytes] = []  # the prefix's records as JSON array items, without the brackets

    def changed(self, key) -> None:
        if key in self.keys:
            self.keys.clear()
            self.parts.clear()

    def array(self, records: dict) -> msgspec.Raw:
        rest = itertools.islice(records.items(), len(self.keys), None)
        grown = list(itertools.takewhile(lambda item: self.done(item[1]), rest))
        if grown:
            self.parts.append(p.to_json_bytes([record for _, record in grown])[1:-1])
            self.keys.update(key for key, _ in grown)
        tail = p.to_json_bytes(list(itertools.islice(records.values(), len(self.keys), None)))[1:-1]
        return msgspec.Raw(b"[" + b",".join(part for part in (*self.parts, tail) if part) + b"]")


class Dispatcher:
    def __init__(
        self,
        state: StateDir,
        tcp: p.TcpAddress | None = None,
        heartbeat_timeout: float = 5.0,
        max_attempts: int = 3,
        repo_url: str = "",
        tls: ssl.SSLContext | None = None,
        socks: list[socket.socket] | None = None,
    ):
        self.state = state.ensure()
        self.tcp = tcp  # listened on besides the Unix socket in the state dir, for components on other machines
        self.socks = socks or []  # listening sockets bound for us (by a supervisor), used instead of binding
        self.heartbeat_timeout = heartbeat_timeout
        self.max_attempts = max_attempts
        self.repo_url = repo_url
        self.tls = tls
        self.limiter = RateLimiter()
        self.token = state.token(create=True)
        self.store = Store(state.db)

        self.commits: dict[str, p.CommitInfo] = {}
        self.tips: dict[str, str] = {}
        self.jobs: dict[int, p.JobInfo] = {}
        self.attempts: dict[tuple[int, int], p.AttemptInfo] = {}
        self.active_job: dict[str, int] = {}  # commit -> its queued or running job
        self.queue: list[tuple[int, int]] = []  # heap of (-job.priority, job id); stale entries are skipped
        self.runners: dict[str, RunnerSession] = {}
        self.cancel_requested: set[int] = set()
        self.subscribers: set[Subscriber] = set()
        self.recent: deque[p.Event] = deque(maxlen=RING_SIZE)
        self._commits_json = JsonPrefix(lambda c: True)  # see _status_json
        self._jobs_json = JsonPrefix(lambda j: j.state in p.FINAL_STATES)
        self._attempts_json = JsonPrefix(lambda a: a.ended_at is not None)
        self.seq = 0
        self.durable_seq = 0
        self.next_job_id = 1

        self._pending = Batch()
        self._flush_task: asyncio.Task | None = None
        self._flush_waiters: list[asyncio.Future] = []
        self._logs: dict[int, object] = {}
        self._log_executor = None
        self._servers: list[asyncio.base_events.Server] = []
        self._bound_socket_file = False  # whether we made state.socket (and remove it at stop)
        self._tasks: set[asyncio.Task] = set()
        self._handlers: set[asyncio.Task] = set()
        self._lock_fd: int | None = None
        self._restart_grace_until = 0.0
        self._closing = False
        self.addresses: list[p.Address] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._lock_fd = os.open(self.state.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise AlreadyRunning(
                f"a dispatcher is already running for {self.state.path} at {self.state.address()}"
            ) from None
        from concurrent.futures import ThreadPoolExecutor

        self._log_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuici-logs")
        snap = await self.store.run(self.store.open)
        self._load(snap)
        for job_id, size in (await asyncio.to_thread(self._running_log_sizes)).items():
            self.jobs[job_id].log_size = size
        _more_descriptors()
        for sock in self.socks or self._bind():
            tls = None if sock.family == socket.AF_UNIX else self.tls
            self._servers.append(await asyncio.start_server(
                functools.partial(self._handle, Door(tls)), sock=sock, limit=p.READ_LIMIT, backlog=p.BACKLOG,
                ssl=tls, ssl_handshake_timeout=HELLO_TIMEOUT if tls else None,
            ))
            self.addresses.append(p.UnixAddress(str(self.state.socket)) if sock.family == socket.AF_UNIX
                                  else p.address_of(sock))
        self.addresses.sort(key=lambda address: isinstance(address, p.TcpAddress))  # the Unix socket first
        self.state.write_addresses([str(address) for address in self.addresses])
        self._spawn(self._watch_heartbeats())
        log.info("dispatcher listening on %s (state %s)", ", ".join(map(str, self.addresses)), self.state.path)

    def _bind(self) -> list[socket.socket]:
        """The Unix socket in the state dir (we hold the lock: a socket file there is a stale one), and the TCP
        address if we have one."""
        socks = p.listeners(str(self.state.socket), self.tcp)
        self._bound_socket_file = True
        return socks

    def _load(self, snap) -> None:
        self.repo_url = self.repo_url or snap.meta.get("repo_url", "")
        if self.repo_url:
            self._pending.meta["repo_url"] = self.repo_url
        for c in snap.commits:
            self.commits[c.sha] = c
        self.tips = dict(snap.tips)
        for job, prio in snap.jobs:
            self.jobs[job.id] = job
            job.priority = prio  # the column is authoritative: bodies stored before the field lack it
            self.next_job_id = max(self.next_job_id, job.id + 1)
            if job.state in ("queued", "running"):
                self.active_job[job.commit] = job.id
            if job.state == "queued":
                heapq.heappush(self.queue, (-prio, job.id))
        for a in snap.attempts:
            self.attempts[(a.job_id, a.attempt)] = a
        self.seq = self.durable_seq = snap.last_seq
        if any(j.state == "running" for j in self.jobs.values()):
            # Runners that were busy when we went down get this long to reconnect and keep their job.
            self._restart_grace_until = time.monotonic() + self.heartbeat_timeout

    def _running_log_sizes(self) -> dict[int, int]:
        """On disk, how much output each running job has: a returning runner resumes from there."""
        sizes = {}
        for job in self.jobs.values():
            if job.state == "running":
                try:
                    sizes[job.id] = self.state.job_log(job.id).stat().st_size
                except FileNotFoundError:
                    sizes[job.id] = 0
        return sizes

    async def stop(self) -> None:
        self._closing = True  # runners dropping now keep their jobs: they may reconnect to our successor
        for server in self._servers:
            server.close()
        if self._bound_socket_file:
            p.remove_socket_file(str(self.state.socket))
        for sess in self.runners.values():
            if sess.conn is not None:
                sess.conn.writer.close()
        for sub in list(self.subscribers):
            sub.conn.writer.close()
        for task in list(self._tasks) + list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._flush()
        for fh in self._logs.values():
            await self._in_log_thread(fh.close)
        self._logs.clear()
        self.store.shutdown()
        if self._log_executor is not None:
            self._log_executor.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ durability

    def _save_job(self, job: p.JobInfo) -> None:
        self._pending.jobs[job.id] = (job, job.priority)
        self._jobs_json.changed(job.id)
        self._schedule_flush()

    def _save_attempt(self, a: p.AttemptInfo) -> None:
        self._pending.attempts[(a.job_id, a.attempt)] = a
        self._attempts_json.changed((a.job_id, a.attempt))
        self._schedule_flush()

    def _publish(self, kind: str, **fields) -> None:
        """Record an event with copies of its records as they are now (they go on changing)."""
        self.seq += 1
        fields = {k: msgspec.structs.replace(v) if isinstance(v, msgspec.Struct) else v for k, v in fields.items()}
        event = p.Event(seq=self.seq, ts=time.time(), kind=kind, **fields)
        self._pending.events.append(event)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = self._spawn(self._flush())

    async def _flush(self) -> None:
        """Write pending changes, then hand their events to subscribers. Loops until none are left."""
        while self._pending:
            batch, self._pending = self._pending, Batch()
            waiters, self._flush_waiters = self._flush_waiters, []
            # Job records are copied so later in-memory changes cannot race the writer thread.
            batch.jobs = {k: (msgspec.structs.replace(j), pr) for k, (j, pr) in batch.jobs.items()}
            batch.attempts = {k: msgspec.structs.replace(a) for k, a in batch.attempts.items()}
            try:
                await self.store.run(self.store.write, batch)
            except Exception as exc:  # disk full, I/O error: keep the changes and retry
                log.error("could not write state to %s (%s); retrying every second", self.store.path, exc)
                self._pending = _merge(batch, self._pending)
                self._flush_waiters = waiters + self._flush_waiters
                await asyncio.sleep(1.0)
                continue
            self.recent.extend(batch.events)
            if batch.events:
                self.durable_seq = batch.events[-1].seq
            for sub in self.subscribers:
                sub.wake.set()
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def durable(self) -> None:
        """Return once every change made so far is on disk."""
        if not self._pending and (self._flush_task is None or self._flush_task.done()):
            return
        fut = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(fut)
        self._schedule_flush()
        await fut

    # ------------------------------------------------------------------ connections

    async def _handle(self, door: Door, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = p.Connection(reader, writer)
        peer = conn.peer
        self._handlers.add(asyncio.current_task())
        session: RunnerSession | None = None
        try:
            hello = await self._hello(door, conn)
            if hello is None:
                return
            if hello.role == "runner":
                session = await self._register_runner(conn, hello)
                if session is not None:
                    await self._serve_runner(conn, session)
            elif hello.role == "observer":
                await self._serve_observer(conn, hello)
            else:
                await conn.send(p.Welcome(version=p.PROTOCOL_VERSION, repo_url=self.repo_url))
                await self._serve_control(conn)
        except p.ProtocolError as exc:
            log.warning("closing connection from %s: %s", peer, exc)
        except (ConnectionError, OSError) as exc:
            log.info("connection from %s dropped: %s", peer, exc)
        except asyncio.CancelledError:
            pass  # shutting down
        except Exception:
            log.exception("closing connection from %s after an internal error", peer)
        finally:
            self._handlers.discard(asyncio.current_task())
            if session is not None and session.conn is conn:
                self._runner_gone(session, "connection closed")
            await conn.close()

    async def _hello(self, door: Door, conn: p.Connection) -> p.Hello | None:
        """The peer's hello if it has the token and our protocol version; otherwise None, with the peer told why
        where that helps it, and a failed handshake charged to its address (see ``RateLimiter``)."""
        source = conn.source
        door.admit(conn)
        timeout = HELLO_TIMEOUT_SHORT if self.limiter.failing(source) else HELLO_TIMEOUT
        problem = None
        try:
            hello = await asyncio.wait_for(conn.recv(p.MAX_HELLO), timeout)
        except asyncio.TimeoutError:
            hello, problem = None, f"no hello within {timeout:g} s"
        except p.ProtocolError as exc:
            hello, problem = None, str(exc)
        except (ConnectionError, OSError) as exc:
            hello, problem = None, f"dropped before its hello: {exc}"
        finally:
            dropped = conn not in door.pending
            door.pending.pop(conn, None)
        if dropped:
            hello = None
            problem = f"no hello within {HELLO_TIMEOUT_SHORT:g} s while over {MAX_PENDING} connections waited"
        if hello is not None and not isinstance(hello, p.Hello):
            problem = f"expected hello, got {type(hello).__name__}"
        if not isinstance(hello, p.Hello):
            self.limiter.failed(source)
            # Connecting and closing (a port scan, a health check) is not worth a line.
            if problem is not None and self.limiter.should_log(source):
                log.warning("closing connection from %s: %s", conn.peer, problem)
            return None
        if not hmac.compare_digest(hello.token.encode(), self.token.encode()):
            self.limiter.failed(source, wrong_token=True)
            if self.limiter.should_log(source):
                log.warning("refused %s: wrong token", conn.peer)
            await conn.send(p.Refused(reason="wrong token"))
            return None
        if hello.version != p.PROTOCOL_VERSION:
            await conn.send(p.Refused(reason=f"protocol version {hello.version} is not {p.PROTOCOL_VERSION}"))
            return None
        return hello

    # ------------------------------------------------------------------ observer

    async def _serve_observer(self, conn: p.Connection, hello: p.Hello) -> None:
        if hello.repo_url and hello.repo_url != self.repo_url:
            self.repo_url = hello.repo_url
            self._pending.meta["repo_url"] = hello.repo_url
            self._schedule_flush()
        await conn.send(p.Welcome(version=p.PROTOCOL_VERSION, repo_url=self.repo_url, tips=dict(self.tips)))
        log.info("observer connected from %s", conn.peer)
        while (msg := await conn.recv()) is not None:
            if isinstance(msg, p.CommitsSeen):
                queued = self._commits_seen(msg)
                # Dispatch at once; only the ack waits for the disk (unacked tips are reported again).
                self._dispatch()
                await self.durable()
                await conn.send(p.TipsAck(branch=msg.branch, tip=msg.tip, queued=queued))
            elif isinstance(msg, p.BranchGone):
                self.tips.pop(msg.branch, None)
                self._pending.tips[msg.branch] = None
                self._publish("branch.deleted", message=msg.branch)
                await self.durable()
                await conn.send(p.TipsAck(branch=msg.branch, tip="", queued=0))
            elif isinstance(msg, p.Heartbeat):
                continue
            else:
                raise p.ProtocolError(f"an observer may not send {type(msg).__name__}")

    def _commits_seen(self, msg: p.CommitsSeen) -> int:
        now = time.time()
        queued = 0
        for commit in msg.commits:
            if commit.sha in self.commits:
                continue
            self.commits[commit.sha] = commit
            self._pending.commits.append((commit, now))
            self._publish("commit.seen", commit=commit)
            self._new_job(commit.sha, commit.branch, priority=0)
            queued += 1
        self.tips[msg.branch] = msg.tip
        self._pending.tips[msg.branch] = msg.tip
        self._schedule_flush()
        return queued

    def _new_job(self, sha: str, branch: str, priority: int) -> p.JobInfo:
        job = p.JobInfo(id=self.next_job_id, commit=sha, branch=branch, state="queued", queued_at=time.time(),
                        priority=priority)
        self.next_job_id += 1
        self.jobs[job.id] = job
        self.active_job[sha] = job.id
        heapq.heappush(self.queue, (-priority, job.id))
        self._save_job(job)
        self._publish("job.queued", job=job)
        return job

    # ------------------------------------------------------------------ runners

    async def _register_runner(self, conn: p.Connection, hello: p.Hello) -> RunnerSession | None:
        name = hello.name or f"{hello.host or 'runner'}-{hello.pid}"
        old = self.runners.get(name)
        if old is not None and old.info.state != "lost":
            log.warning("refused runner %r from %s: name taken", name, conn.peer)
            await conn.send(p.Refused(reason=f"a runner named {name!r} is already registered", permanent=False))
            return None
        now = time.monotonic()
        info = p.RunnerInfo(name=name, host=hello.host, pid=hello.pid, state="idle", last_heartbeat=time.time(),
                            jobs_done=old.info.jobs_done if old else 0)
        session = RunnerSession(info=info, conn=conn, last_seen=now, idle_since=now)
        offsets: dict[int, int] = {}
        for held in hello.held:
            job = self.jobs.get(held.job_id)
            if job is not None and job.state == "running" and job.runner == name and job.attempts == held.attempt:
                offsets[job.id] = job.log_size
                info.state, info.job, session.attempt = "busy", job.id, held.attempt
            else:
                log.info("runner %s holds job %s attempt %s that is no longer its own", name, held.job_id, held.attempt)
        self.runners[name] = session
        await conn.send(p.Welcome(version=p.PROTOCOL_VERSION, repo_url=self.repo_url, log_offsets=offsets, name=name))
        log.info("runner %s joined from %s (pid %s)%s", name, conn.peer, hello.pid,
                 f", keeps job {info.job}" if info.job else "")
        self._publish("runner.joined", runner=info)
        if info.job is not None and info.job in self.cancel_requested:
            await conn.send(p.CancelJob(job_id=info.job))
        self._dispatch()
        return session

    async def _serve_runner(self, conn: p.Connection, session: RunnerSession) -> None:
        while (msg := await conn.recv()) is not None:
            session.last_seen = time.monotonic()
            if isinstance(msg, p.Heartbeat):
                session.info.last_heartbeat = time.time()
            elif isinstance(msg, p.Output):
                await self._output(session, msg)
            elif isinstance(msg, p.JobResult):
                await conn.send(await self._result(session, msg))
                self._dispatch()
            elif isinstance(msg, p.Bye):
                self._runner_gone(session, "runner left", left=True)
                return
            else:
                raise p.ProtocolError(f"a runner may not send {type(msg).__name__}")
            if session.conn is not conn:  # marked lost while we waited
                return

    def _owns(self, session: RunnerSession, job_id: int, attempt: int) -> bool:
        job = self.jobs.get(job_id)
        return (
            job is not None and job.state == "running" and job.runner == session.info.name
            and job.attempts == attempt and session.info.job == job_id
        )

    async def _output(self, session: RunnerSession, msg: p.Output) -> None:
        if not self._owns(session, msg.job_id, msg.attempt):
            if session.taken_back == (msg.job_id, msg.attempt):
                return  # sent before the runner heard that we took the job back
            raise p.ProtocolError(f"output for job {msg.job_id} attempt {msg.attempt}, which is not this runner's")
        job = self.jobs[msg.job_id]
        have = job.log_size
        if msg.offset > have:
            raise p.ProtocolError(f"output for job {job.id} at offset {msg.offset} leaves a gap after {have}")
        data = msg.data[have - msg.offset:]
        if not data:
            return
        await self._write_log(session, job.id, data)
        if not self._owns(session, msg.job_id, msg.attempt):
            return  # lost while writing; the attempt's log is being discarded
        job.log_size = have + len(data)
        for sub in self.subscribers:
            if sub.output:
                sub.offer(p.JobOutput(job_id=job.id, offset=have, data=data))

    async def _write_log(self, session: RunnerSession, job_id: int, data: bytes) -> None:
        """Append to the job's log; on a disk error, wait and retry (the runner waits on us meanwhile)."""
        while True:
            try:
                fh = self._logs.get(job_id)
                if fh is None:
                    fh = self._logs[job_id] = await self._in_log_thread(open, self.state.job_log(job_id), "ab", 0)
                written = await self._in_log_thread(fh.write, data)
                if written == len(data):
                    return
                data = data[written:]
            except OSError as exc:
                log.error("cannot write the log of job %s (%s); retrying", job_id, exc)
                await asyncio.sleep(1.0)
            session.last_seen = time.monotonic()  # it is us who are stuck, not the runner

    async def _in_log_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._log_executor, fn, *args)

    async def _close_log(self, job_id: int) -> None:
        fh = self._logs.pop(job_id, None)
        if fh is not None:
            await self._in_log_thread(fh.close)

    async def _result(self, session: RunnerSession, msg: p.JobResult) -> p.ResultAck:
        if not self._owns(session, msg.job_id, msg.attempt):
            log.warning("rejected result from %s for job %s attempt %s: not its job (any more)",
                        session.info.name, msg.job_id, msg.attempt)
            return p.ResultAck(job_id=msg.job_id, attempt=msg.attempt, accepted=False,
                               reason="this attempt is no longer assigned to this runner")
        job = self.jobs[msg.job_id]
        await self._close_log(job.id)
        if msg.cancelled or job.id in self.cancel_requested:
            state, outcome = "cancelled", "cancelled"
        elif msg.error:
            state, outcome = "error", "error"
        elif msg.timed_out:
            state, outcome = "failed", "timeout"
        else:
            state = outcome = "passed" if msg.exit_code == 0 else "failed"
        job.exit_code = msg.exit_code
        job.duration_s = msg.duration_s
        job.passed, job.failed, job.skipped = msg.passed, msg.failed, msg.skipped
        job.env, job.env_reused = msg.env, msg.env_reused
        job.error = msg.error or (f"timed out after {msg.duration_s:.0f} s" if msg.timed_out else "")
        self._finish(job, state, outcome, job.error)
        await self.durable()
        session.info.jobs_done += 1
        self._idle(session)
        return p.ResultAck(job_id=msg.job_id, attempt=msg.attempt, accepted=True)

    def _idle(self, session: RunnerSession) -> None:
        """Free the runner: only right before the ack that drops its job goes out, so that nothing can be
        assigned ahead of it."""
        session.info.state, session.info.job = "idle", None
        session.idle_since = time.monotonic()
        self._publish("runner.idle", runner=session.info)

    def _finish(self, job: p.JobInfo, state: str, outcome: str, reason: str) -> None:
        job.state = state
        job.finished_at = time.time()
        self.active_job.pop(job.commit, None)
        self.cancel_requested.discard(job.id)
        a = self.attempts.get((job.id, job.attempts))
        if a is not None and a.ended_at is None:
            a.ended_at, a.outcome, a.reason = job.finished_at, outcome, reason
            self._save_attempt(a)
        self._save_job(job)
        self._publish("job.finished", job=job, message=reason)

    def _runner_gone(self, session: RunnerSession, reason: str, left: bool = False) -> None:
        """The runner is gone (lost, or left on purpose); its job goes back to the queue."""
        if self._closing:
            return
        info = session.info
        if session.conn is not None:
            session.conn.writer.close()
        session.conn = None
        info.state = "lost"
        job_id, info.job = info.job, None
        if left:
            log.info("runner %s left", info.name)
            self.runners.pop(info.name, None)
        else:
            log.warning("runner %s lost: %s", info.name, reason)
        self._publish("runner.left" if left else "runner.lost", runner=info, message=reason)
        if job_id is not None and self.jobs[job_id].state == "running":  # not finished while its ack was on disk
            self._requeue(self.jobs[job_id], reason if left else "runner lost")
        self._dispatch()

    def _requeue(self, job: p.JobInfo, reason: str) -> None:
        a = self.attempts.get((job.id, job.attempts))
        if a is not None and a.ended_at is None:
            a.ended_at, a.outcome, a.reason = time.time(), "lost", reason
            self._save_attempt(a)
        self._close_log_later(job.id)
        if job.id in self.cancel_requested:
            self._finish(job, "cancelled", "cancelled", reason)
        elif job.attempts >= self.max_attempts:
            job.error = f"gave up after {job.attempts} attempts: {reason}"
            self._finish(job, "error", "error", job.error)
        else:
            job.state, job.runner = "queued", None
            # Everything it printed belongs to the lost attempt; the next attempt starts a fresh log.
            job.log_size = 0
            self._truncate_log_later(job.id)
            heapq.heappush(self.queue, (-job.priority, job.id))
            self._save_job(job)
            self._publish("job.requeued", job=job, message=reason)

    def _close_log_later(self, job_id: int) -> None:
        fh = self._logs.pop(job_id, None)
        if fh is not None:
            self._log_executor.submit(fh.close)

    def _truncate_log_later(self, job_id: int) -> None:
        path = self.state.job_log(job_id)
        self._log_executor.submit(_truncate, path)

    async def _watch_heartbeats(self) -> None:
        """Mark quiet runners lost, at most a quarter of the timeout late (and wake no more often than that)."""
        while True:
            await asyncio.sleep(self.heartbeat_timeout / 4)
            now = time.monotonic()
            for sess in list(self.runners.values()):
                if sess.conn is not None and now - sess.last_seen > self.heartbeat_timeout:
                    self._runner_gone(sess, f"no heartbeat for {now - sess.last_seen:.1f} s")
            if self._restart_grace_until and now > self._restart_grace_until:
                self._restart_grace_until = 0.0
                held = {s.info.job for s in self.runners.values() if s.conn is not None}
                for job in list(self.jobs.values()):
                    if job.state == "running" and job.id not in held:
                        self._requeue(job, "runner lost")
                self._dispatch()

    def _dispatch(self) -> None:
        """Give queued jobs to idle runners: oldest job first, longest-idle runner first."""
        idle = sorted(
            (s for s in self.runners.values() if s.conn is not None and s.info.state == "idle"),
            key=lambda s: s.idle_since,
        )
        for session in idle:
            job = self._pop_queue()
            if job is None:
                return
            self._assign(session, job)

    def _pop_queue(self) -> p.JobInfo | None:
        while self.queue:
            neg_prio, job_id = heapq.heappop(self.queue)
            job = self.jobs.get(job_id)
            if job is not None and job.state == "queued" and -neg_prio == job.priority:
                return job
        return None

    def _assign(self, session: RunnerSession, job: p.JobInfo) -> None:
        job.attempts += 1
        job.state, job.runner = "running", session.info.name
        job.started_at, job.finished_at = time.time(), None
        job.exit_code = job.duration_s = job.passed = job.failed = job.skipped = None
        job.error, job.env, job.env_reused = "", "", False
        session.info.state, session.info.job, session.attempt = "busy", job.id, job.attempts
        a = p.AttemptInfo(job_id=job.id, attempt=job.attempts, runner=session.info.name, started_at=job.started_at)
        self.attempts[(job.id, job.attempts)] = a
        self._save_attempt(a)
        self._save_job(job)
        self._publish("job.started", job=job, runner=session.info)
        assert session.conn is not None
        session.conn.send_nowait(p.Assign(job_id=job.id, attempt=job.attempts, commit=job.commit,
                                          branch=job.branch, repo_url=self.repo_url))

    # ------------------------------------------------------------------ control clients

    async def _serve_control(self, conn: p.Connection) -> None:
        while (msg := await conn.recv()) is not None:
            if isinstance(msg, p.Subscribe):
                await self._stream(conn, msg)
                return
            if isinstance(msg, p.StatusRequest) and msg.as_json:
                document = self._status_json(msg.limit)
                for start in range(0, len(document), p.OUTPUT_CHUNK):
                    end = start + p.OUTPUT_CHUNK
                    conn.send_nowait(p.StatusJson(data=document[start:end], more=end < len(document)))
                await conn.writer.drain()
            elif isinstance(msg, p.StatusRequest):
                await conn.send(self._status(msg.limit))
            elif isinstance(msg, p.RerunRequest):
                reply = self._rerun(msg.commit)
                await self.durable()
                await conn.send(reply)
                self._dispatch()
            elif isinstance(msg, p.CancelRequest):
                await conn.send(await self._cancel(msg.job_id))
            elif isinstance(msg, p.Notice):
                if not msg.kind.startswith("process."):
                    raise p.ProtocolError(f"notice of unknown kind {msg.kind!r}")
                self._publish(msg.kind, message=f"{msg.name}: {msg.message}")
                await conn.send(p.Reply(ok=True))
            else:
                raise p.ProtocolError(f"a control client may not send {type(msg).__name__}")

    def _status(self, limit: int) -> p.StatusReply:
        jobs = list(self.jobs.values())
        if limit:
            jobs = jobs[-limit:]
        shas = {j.commit for j in jobs}
        commits = [c for c in self.commits.values() if not limit or c.sha in shas]
        ids = {j.id for j in jobs}
        return p.StatusReply(
            repo_url=self.repo_url, last_seq=self.seq, commits=commits, jobs=jobs,
            runners=[s.info for s in self.runners.values()],
            attempts=[a for a in self.attempts.values() if a.job_id in ids],
        )

    def _status_json(self, limit: int) -> bytes:
        """``_status`` as the JSON document `status --json` prints; the long lists mostly from ``JsonPrefix``."""
        if limit:
            return p.to_json_bytes(self._status(limit))
        # Each list goes in as one msgspec.Raw (a JSON array), which the encoder copies in as it is.
        return p.to_json_bytes(p.StatusReply(
            repo_url=self.repo_url, last_seq=self.seq, commits=self._commits_json.array(self.commits),
            jobs=self._jobs_json.array(self.jobs), runners=[s.info for s in self.runners.values()],
            attempts=self._attempts_json.array(self.attempts),
        ))

    def _rerun(self, prefix: str) -> p.Reply:
        prefix = prefix.strip().lower()
        matches = [sha for sha in self.commits if sha.startswith(prefix)] if len(prefix) >= 4 else []
        if len(matches) != 1:
            return p.Reply(ok=False, message=f"{'no' if not matches else 'more than one'} commit matches {prefix!r}")
        sha = matches[0]
        top = max((j.priority for j in self.jobs.values()), default=0) + 1
        active = self.active_job.get(sha)
        if active is not None and self.jobs[active].state == "queued":
            job = self.jobs[active]
            job.priority = top
            heapq.heappush(self.queue, (-top, job.id))
            self._save_job(job)
            self._publish("job.queued", job=job, message="moved to the front")
            return p.Reply(ok=True, message=f"job {job.id} moved to the front of the queue", job=job)
        if active is not None:
            return p.Reply(ok=False, message=f"job {active} for {sha[:10]} is running already")
        commit = self.commits[sha]
        job = self._new_job(sha, commit.branch, priority=top)
        return p.Reply(ok=True, message=f"job {job.id} queued at the front", job=job)

    async def _cancel(self, job_id: int) -> p.Reply:
        job = self.jobs.get(job_id)
        if job is None:
            return p.Reply(ok=False, message=f"no job {job_id}")
        if job.state == "queued":
            self._finish(job, "cancelled", "cancelled", "cancelled while queued")
            await self.durable()
            return p.Reply(ok=True, message=f"job {job_id} cancelled", job=job)
        if job.state == "running":
            if job_id not in self.cancel_requested:
                self.cancel_requested.add(job_id)
                self._spawn(self._take_back(job_id, job.attempts))
            session = self.runners.get(job.runner or "")
            if session is not None and session.conn is not None:
                await session.conn.send(p.CancelJob(job_id=job_id))
            return p.Reply(ok=True, message=f"job {job_id} is being cancelled on {job.runner}", job=job)
        return p.Reply(ok=False, message=f"job {job_id} has already finished ({job.state})", job=job)

    async def _take_back(self, job_id: int, attempt: int) -> None:
        """End a cancelled job ourselves if its runner has not within ``CANCEL_GRACE`` (its handling of the job
        died, or it is stuck), and have the runner drop it: else the job stays running and the runner busy."""
        await asyncio.sleep(CANCEL_GRACE)
        job = self.jobs[job_id]
        if job.state != "running" or job.attempts != attempt:
            return
        reason = f"{job.runner} had not ended it {CANCEL_GRACE:g} s after the cancel; the dispatcher took it back"
        log.warning("job %s: %s", job_id, reason)
        session = self.runners.get(job.runner or "")
        self._close_log_later(job_id)
        self._finish(job, "cancelled", "cancelled", reason)
        if session is None or session.conn is None or session.info.job != job_id:
            return  # the runner is away: when it comes back, it is told that the job is no longer its own
        conn = session.conn
        session.taken_back = (job_id, attempt)
        await self.durable()
        if session.conn is conn and session.info.job == job_id:
            self._idle(session)
            conn.send_nowait(p.ResultAck(job_id=job_id, attempt=attempt, accepted=False, reason=reason))
            self._dispatch()

    async def _stream(self, conn: p.Connection, sub_msg: p.Subscribe) -> None:
        """Send every event after the subscriber's cursor, then live ones; no gaps, no duplicates."""
        sub = Subscriber(conn=conn, cursor=sub_msg.after_seq, output=sub_msg.output)
        self.subscribers.add(sub)
        closed = asyncio.ensure_future(conn.reader.read(1))
        try:
            while not closed.done():
                sub.wake.clear()
                events = await self._events_after(sub.cursor)
                for event in events:
                    conn.send_nowait(event)
                    sub.cursor = event.seq
                while sub.chunks:
                    chunk = sub.chunks.popleft()
                    sub.chunk_bytes -= len(chunk.data)
                    conn.send_nowait(chunk)
                await conn.writer.drain()
                if not events:
                    woken = asyncio.ensure_future(sub.wake.wait())
                    await asyncio.wait([closed, woken], return_when=asyncio.FIRST_COMPLETED)
                    woken.cancel()
        finally:
            closed.cancel()
            self.subscribers.discard(sub)

    async def _events_after(self, cursor: int, limit: int = 1000) -> list[p.Event]:
        """Durable events after ``cursor``: from the in-memory ring, or the store for older ones."""
        if cursor >= self.durable_seq:
            return []
        if not self.recent or cursor + 1 < self.recent[0].seq:
            return await self.store.run(self.store.events_after, cursor, limit)
        start = cursor + 1 - self.recent[0].seq
        return [self.recent[i] for i in range(start, min(len(self.recent), start + limit))]


def _more_descriptors() -> None:
    """Raise our limit on open files to what we may (often 1024 of 500,000): connections yet to say hello must
    not use up the descriptors that peers with the token need (Door.admit bounds them by rate, not number)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 16 if hard == resource.RLIM_INFINITY else min(hard, 1 << 16)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _truncate(path: Path) -> None:
    try:
        with open(path, "r+b") as fh:
            fh.truncate(0)
    except FileNotFoundError:
        pass


def _merge(first: Batch, second: Batch) -> Batch:
    first.commits += second.commits
    first.tips.update(second.tips)
    first.jobs.update(second.jobs)
    first.attempts.update(second.attempts)
    first.events += second.events
    first.meta.update(second.meta)
    return first


async def run_dispatcher(state: StateDir, tcp: p.TcpAddress | None, **kwargs) -> None:
    """Run until cancelled or signalled (SIGINT/SIGTERM)."""
    import signal

    dispatcher = Dispatcher(state, tcp, **kwargs)
    await dispatcher.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await dispatcher.stop()
        log.info("dispatcher stopped")

"""The dispatcher's asyncio layer: listening sockets, handshakes, roles and streams.

It feeds what peers send to the ``Scheduler`` and carries out what that asks for (``_carry_out``): records go to
the ``Journal``, output to ``JobLogs``, messages to runners' connections. Test cases are held by ``testresults``
until their job's result, and stored with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hmac
import logging
import os
import socket
import ssl
import subprocess
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import localconfig
from .. import wire as p
from ..errors import AlreadyRunning, CommandError, ConfigError, LeaseLost
from ..localconfig import LocalConfig
from ..notify import Hook, Notification, notification_for
from ..sizes import format_size
from ..statedir import StateDir
from ..store import JobTests, Store
from . import scheduler as s
from .joblogs import JobLogs
from .journal import Journal

if TYPE_CHECKING:
    from ..pgstore import PgJobLogs, PgStore
    from .group import Leadership
from .status import Status
from .testresults import Incoming, Queries

log = logging.getLogger("tuici.dispatcher")

OUTPUT_BUFFER = 4 * 1024 * 1024  # live output bytes held per subscriber; past it, chunks are dropped
HELLO_TIMEOUT = 5.0  # seconds a new connection has to say hello (and over TLS, to shake hands first)
# A peer with the token says hello as soon as it connects: it can do with less time from an address past its
# budget of failed handshakes, and while over MAX_PENDING connections (of one listening socket) wait for theirs.
HELLO_TIMEOUT_SHORT = 1.0
MAX_PENDING = 256
GC_INTERVAL = 3600.0  # seconds between retention runs (the first is at start)


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
        group: Leadership | None = None,
    ):
        self.state = state.ensure()
        self.tcp = tcp  # listened on besides the Unix socket in the state dir, for components on other machines
        self.socks = socks or []  # listening sockets bound for us (by a supervisor), used instead of binding
        self.tls = tls
        self.limiter = RateLimiter()
        self.token = state.token(create=True)
        self.sched = s.Scheduler(heartbeat_timeout=heartbeat_timeout, max_attempts=max_attempts, repo_url=repo_url)
        # One of a group sharing a PostgreSQL store (``group``), or alone on the SQLite file in the state dir.
        self.group = group
        store: PgStore | Store = group.store if group else Store(state.db)
        self.journal = Journal(store, on_durable=self._wake_subscribers,
                               on_lease_lost=group.lost if group else None)
        self.logs: JobLogs | PgJobLogs = group.logs if group else JobLogs(self.state)
        self.active = group is None  # a member of a group stands by until it holds the lease
        self._activated = asyncio.Event()  # set once active (a member of a group: once it loaded the record)
        self.status = Status(self.sched, (lambda: group.members) if group else list)
        self.incoming = Incoming()
        self.queries = Queries(store, self.sched.jobs.get)
        self.conns: dict[str, p.Connection] = {}  # connected runners' connections, by name
        self.subscribers: set[Subscriber] = set()
        self.log_followers: dict[int, set[asyncio.Event]] = {}  # job id -> a wake-up per `log -f` following it
        self._servers: list[asyncio.base_events.Server] = []
        self._bound_socket_file = False  # whether we made state.socket (and remove it at stop)
        self._tasks: set[asyncio.Task] = set()
        self._handlers: set[asyncio.Task] = set()
        self._lock_fd: int | None = None
        self._closing = False
        self.addresses: list[p.Address] = []
        # The user's local settings (hook, retention), read at start; None if that file is broken: then neither
        # runs, rather than retention with defaults the user meant to change.
        self.config: LocalConfig | None = LocalConfig()
        self.hook = Hook((), 0.0, logging.getLogger("tuici.notify"))
        self._gc_lock = asyncio.Lock()
        self._leases_changed = asyncio.Event()  # wakes _watch_leases
        self.last_gc = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Lock the state dir, load the record and serve (a member of a group: serve, standing by)."""
        self._lock_fd = os.open(self.state.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise AlreadyRunning(
                f"a dispatcher is already running for {self.state.path} at {self.state.address()}"
            ) from None
        try:
            self.config = await asyncio.to_thread(localconfig.load, self.state)
        except ConfigError as exc:
            self.config = None
            log.error("%s; retention and notify_command are off until it is fixed and the dispatcher restarted", exc)
        if self.config is not None:
            self.hook = Hook(self.config.notify_command, self.config.notify_timeout, self.hook.log)
        if self.group is None:
            await self.activate()
        await self._listen()

    async def activate(self) -> None:
        """Load the record and start acting on it: alone, at once; in a group, once we hold the lease."""
        snap = await self.journal.open()
        self.sched.repo_url = self.sched.repo_url or snap.meta.get("repo_url", "")
        if self.sched.repo_url:
            self.journal.save_meta("repo_url", self.sched.repo_url)
        self.sched.load(snap)
        running = [job.id for job in self.sched.jobs.values() if job.state == "running"]
        for job_id, size in (await self.logs.sizes(running)).items():
            self.sched.jobs[job_id].log_size = size
        self._spawn(self._watch_leases())
        self._spawn(self._retain())
        self.active = True
        self._activated.set()

    def announce_active(self) -> None:
        """Tell subscribers (the control center's status bar and toast) that we took over."""
        assert self.group is not None
        self.journal.publish("dispatcher.active", {
            "message": f"dispatcher {self.group.name} at {self.group.address} is active (epoch {self.group.epoch})"})

    async def _listen(self) -> None:
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
        log.info("dispatcher listening on %s (state %s)", ", ".join(map(str, self.addresses)), self.state.path)

    def _bind(self) -> list[socket.socket]:
        """The Unix socket in the state dir (we hold the lock: a socket file there is a stale one), and the TCP
        address if we have one."""
        socks = p.listeners(str(self.state.socket), self.tcp)
        self._bound_socket_file = True
        return socks

    async def stop(self) -> None:
        self._closing = True  # runners dropping now keep their jobs: they may reconnect to our successor
        for server in self._servers:
            server.close()
        if self._bound_socket_file:
            p.remove_socket_file(str(self.state.socket))
        for conn in self.conns.values():
            conn.writer.close()
        for sub in list(self.subscribers):
            sub.conn.writer.close()
        for task in list(self._tasks) + list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self.hook.stop()
        if self.group is not None and self.group.lost_reason:
            await self.journal.abandon()  # nothing of ours may become durable any more
        else:
            await self.journal.close()
        await self.logs.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ the scheduler's effects

    def _carry_out(self) -> None:
        """Do what the scheduler asked for, in the order it asked."""
        for effect in self.sched.effects():
            match effect:
                case s.Publish(kind, fields):
                    notification = notification_for(self.journal.publish(kind, fields))
                    if notification is not None:
                        self._spawn(self._notify(notification))
                    if "job" in fields:
                        self._wake_log_followers(fields["job"].id)
                case s.SaveJob(job):
                    self.journal.save_job(job)
                    self.status.jobs.changed(job.id)
                case s.SaveAttempt(a):
                    self.journal.save_attempt(a)
                    self.status.attempts.changed((a.job_id, a.attempt))
                case s.SaveCommit(commit, seen_at):
                    self.journal.save_commit(commit, seen_at)
                case s.SaveTip(branch, sha):
                    self.journal.save_tip(branch, sha)
                case s.SaveBisection(bisection_id, info, made):
                    self.journal.save_bisection(bisection_id, info, made)
                case s.Send(runner, message):
                    if self.group is not None and not self.group.may_act():
                        continue  # our lease may have run out: not one more job handed out (we step down)
                    self.conns[runner].send_nowait(message)
                    self._leases_changed.set()  # a job assigned (its lease starts), a runner welcomed back with one
                case s.Disconnect(runner):
                    self.conns.pop(runner).writer.close()
                case s.CloseLog(job_id):
                    self.logs.close(job_id)
                case s.TruncateLog(job_id):
                    self.logs.truncate(job_id)
                case s.TakeBackAt(job_id, attempt, at):
                    self._spawn(self._take_back(job_id, attempt, at))

    def _dispatch(self) -> None:
        self.sched.dispatch()
        self._carry_out()

    def _runner_gone(self, runner: s.Runner, reason: str, left: bool = False) -> None:
        if not self._closing:
            self.sched.runner_gone(runner, reason, left)
            self._carry_out()

    async def _watch_leases(self) -> None:
        """Mark a runner that holds a job lost as soon as it was quiet for the heartbeat timeout (``expire``), and
        end the grace after a restart; asleep, not waking, while no runner holds a job."""
        while True:
            self._leases_changed.clear()
            due = self.sched.next_expiry()
            try:
                # Just past the deadline: ``expire`` wants the timeout exceeded.
                await asyncio.wait_for(self._leases_changed.wait(),
                                       None if due is None else max(0.0, due - self.sched.clock.monotonic()) + 0.001)
            except asyncio.TimeoutError:
                self.sched.expire()
                self._carry_out()

    async def _take_back(self, job_id: int, attempt: int, at: float) -> None:
        await asyncio.sleep(at - self.sched.clock.monotonic())
        runner = self.sched.take_back(job_id, attempt)
        self._carry_out()
        if runner is not None:
            await self.journal.durable()
            self.sched.drop_taken_back(runner)
            self._carry_out()

    async def _notify(self, notification: Notification) -> None:
        """Run the hook once the event is durable (as subscribers see it)."""
        await self.journal.durable()
        job_log = str(self.state.job_log(notification.job.id))
        self.hook.submit(notification, notification.environment(self.sched.repo_url, job_log))

    # ------------------------------------------------------------------ retention

    async def _retain(self) -> None:
        while True:
            try:
                await self.collect()
            except Exception:  # a disk error, say: the next run tries again
                log.exception("retention failed")
            await asyncio.sleep(GC_INTERVAL)

    async def collect(self) -> p.GcReply | p.Reply:
        """Apply retention now: delete the job logs and events past ``keep_days`` and the oldest logs past
        ``keep_bytes`` (never a queued or running job's), off the event loop; what that freed."""
        config = self.config
        if config is None:
            return p.Reply(ok=False, message=f"{self.state.local_config} is not valid (the dispatcher's log says "
                                             "why): retention is off until it is fixed and the dispatcher restarted")
        async with self._gc_lock:
            jobs = self.sched.prune(config.keep_days, config.keep_bytes)
            ids = [job.id for job in jobs]
            # The files first: a dispatcher that dies in between has records that still count them (the next run
            # deletes them again, missing files skipped), never files that no record counts.
            freed = await self.logs.delete(ids) if ids else 0
            self.sched.logs_deleted(jobs)
            self._carry_out()
            if ids:
                await self.journal.store.forget_job_rows(ids)
            events = 0
            if config.keep_days < float("inf"):
                cutoff = self.sched.clock.time() - config.keep_days * s.DAY
                events = await self.journal.prune_events(cutoff)
                await self._prune_tries(cutoff)
            self.last_gc = self.sched.clock.time()
            if ids or events:
                message = f"deleted {len(ids)} job logs ({format_size(freed)}) and {events} events"
                log.info("retention: %s", message)
                self.journal.publish("history.pruned", {"message": message})
            return p.GcReply(logs=len(ids), log_bytes=freed, events=events, history=await self.history())

    async def _prune_tries(self, cutoff: float) -> None:
        """Delete the refs of tries (`tuici try`) whose result is older than ``cutoff``, in the repository when it
        is on this machine; a failure is logged (the next run tries again)."""
        from ..trying import prune_try_refs

        repo = self.sched.repo_url
        if not repo or not os.path.isdir(repo):
            return
        finished: dict[str, float | None] = {}
        for job in sorted(self.sched.jobs.values(), key=lambda j: j.id):  # the latest job of a commit last
            if job.kind == "try":
                finished[job.commit] = job.finished_at if job.state in p.FINAL_STATES else None
        try:
            removed = await asyncio.to_thread(prune_try_refs, Path(repo), finished, cutoff)
        except (OSError, subprocess.CalledProcessError, CommandError) as exc:
            log.warning("retention: could not remove old try refs in %s: %s", repo, exc)
            return
        if removed:
            log.info("retention: removed %d try refs", len(removed))

    async def history(self) -> p.History:
        """What the history takes, and the retention in force (none, keep_bytes 0, while the settings are bad)."""
        log_bytes, logs = self.sched.kept_logs()
        config = self.config
        keep_days = config.keep_days if config is not None and config.keep_days < float("inf") else 0.0
        return p.History(
            logs=logs, log_bytes=log_bytes, db_bytes=await self.journal.store.size_bytes(),
            keep_days=keep_days, keep_bytes=config.keep_bytes if config is not None else 0,
            events_from=self.journal.pruned_through + 1, last_gc=self.last_gc,
        )

    def _wake_subscribers(self) -> None:
        for sub in self.subscribers:
            sub.wake.set()

    # ------------------------------------------------------------------ connections

    async def _handle(self, door: Door, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = p.Connection(reader, writer)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            # a runner's host that vanished: its idle connection ends in seconds (not a subscriber slow to read)
            p.notice_dead_peers(sock, unread_too=False)
        peer = conn.peer
        task = asyncio.current_task()
        assert task is not None  # a handler runs in a task of its own
        self._handlers.add(task)
        runner: s.Runner | None = None
        try:
            hello = await self._hello(door, conn)
            if hello is None:
                return
            if not self.active and self.group is not None and self.group.epoch:
                # We hold the lease and are loading the record: the peer waits for us rather than be sent to us.
                await asyncio.wait_for(self._activated.wait(), HELLO_TIMEOUT)
            if not self.active:
                await conn.send(self._standby_refusal())
                return
            if hello.role == "runner":
                runner = await self._register_runner(conn, hello)
                if runner is not None:
                    await self._serve_runner(conn, runner)
            elif hello.role == "observer":
                await self._serve_observer(conn, hello)
            else:
                await conn.send(p.Welcome(version=p.PROTOCOL_VERSION, repo_url=self.sched.repo_url))
                await self._serve_control(conn)
        except p.ProtocolError as exc:
            log.warning("closing connection from %s: %s", peer, exc)
        except LeaseLost:  # a request that came in as we stepped down: answered as a standby answers
            with contextlib.suppress(ConnectionError, OSError):
                await conn.send(self._standby_refusal())
        except (ConnectionError, OSError) as exc:
            log.info("connection from %s dropped: %s", peer, exc)
        except asyncio.CancelledError:
            pass  # shutting down
        except Exception:
            log.exception("closing connection from %s after an internal error", peer)
        finally:
            self._handlers.discard(asyncio.current_task())
            if runner is not None and self.conns.get(runner.info.name) is conn:
                self.incoming.drop(runner.info.name)
                self._runner_gone(runner, "connection closed")
            await conn.close()

    def _standby_refusal(self) -> p.Refused:
        active = self.group.active_address if self.group else ""
        where = f"; the active one is at {active}" if active else "; no dispatcher of the group is active yet"
        return p.Refused(reason=f"this dispatcher stands by{where}", permanent=False, active=active)

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
        if hello.repo_url and hello.repo_url != self.sched.repo_url:
            self.sched.repo_url = hello.repo_url
            self.journal.save_meta("repo_url", hello.repo_url)
        await conn.send(p.Welcome(version=p.PROTOCOL_VERSION, repo_url=self.sched.repo_url, tips=dict(self.sched.tips)))
        log.info("observer connected from %s", conn.peer)
        while (msg := await conn.recv()) is not None:
            if isinstance(msg, p.CommitsSeen):
                queued = self.sched.commits_seen(msg)
                self._carry_out()
                # Dispatch at once; only the ack waits for the disk (unacked tips are reported again).
                self._dispatch()
                await self.journal.durable()
                await conn.send(p.TipsAck(branch=msg.branch, tip=msg.tip, queued=queued))
            elif isinstance(msg, p.BranchGone):
                self.sched.branch_gone(msg)
                self._carry_out()
                await self.journal.durable()
                await conn.send(p.TipsAck(branch=msg.branch, tip="", queued=0))
            elif isinstance(msg, p.Heartbeat):
                continue
            else:
                raise p.ProtocolError(f"an observer may not send {type(msg).__name__}")

    # ------------------------------------------------------------------ runners

    async def _register_runner(self, conn: p.Connection, hello: p.Hello) -> s.Runner | None:
        runner = self.sched.register(hello)
        if runner is None:
            name = s.runner_name(hello)
            log.warning("refused runner %r from %s: name taken", name, conn.peer)
            await conn.send(p.Refused(reason=f"a runner named {name!r} is already registered", permanent=False))
            return None
        info = runner.info
        self.conns[info.name] = conn
        self._carry_out()  # the welcome first
        await conn.writer.drain()
        log.info("runner %s joined from %s (pid %s)%s", info.name, conn.peer, hello.pid,
                 f", keeps job {info.job}" if info.job else "")
        self._dispatch()
        return runner

    async def _serve_runner(self, conn: p.Connection, runner: s.Runner) -> None:
        while (msg := await conn.recv()) is not None:
            self.sched.heard_from(runner)
            if isinstance(msg, p.Heartbeat):
                self.sched.heartbeat(runner)
            elif isinstance(msg, p.Output):
                await self._output(runner, msg)
            elif isinstance(msg, p.TestCases):
                self.incoming.add(runner.info.name, msg)
            elif isinstance(msg, p.JobResult):
                await conn.send(await self._result(runner, msg))
                self._dispatch()
            elif isinstance(msg, p.Bye):
                self._runner_gone(runner, "runner left", left=True)
                return
            else:
                raise p.ProtocolError(f"a runner may not send {type(msg).__name__}")
            if self.conns.get(runner.info.name) is not conn:  # marked lost while we waited
                return

    async def _output(self, runner: s.Runner, msg: p.Output) -> None:
        data = self.sched.output(runner, msg)
        if not data:
            return
        await self.logs.write(msg.job_id, data, stalled=lambda: self.sched.heard_from(runner))
        offset = self.sched.output_written(runner, msg, data)
        if offset is None:
            return
        self._wake_log_followers(msg.job_id)
        for sub in self.subscribers:
            if sub.output:
                sub.offer(p.JobOutput(job_id=msg.job_id, offset=offset, data=data))

    async def _result(self, runner: s.Runner, msg: p.JobResult) -> p.ResultAck:
        cases = self.incoming.take(runner.info.name, msg)
        rejected = self.sched.result(runner, msg)
        if rejected is not None:
            return p.ResultAck(job_id=msg.job_id, attempt=msg.attempt, accepted=False, reason=rejected)
        self._carry_out()
        job = self.sched.jobs[msg.job_id]
        if cases and job.state in ("passed", "failed") and job.finished_at is not None:
            # In the job's own transaction (its SaveJob is pending): its finished event is published with them.
            self.journal.save_tests(JobTests(job.id, job.commit, job.branch, job.finished_at, cases))
        await self.journal.durable()
        self.sched.result_durable(runner)
        self._carry_out()
        return p.ResultAck(job_id=msg.job_id, attempt=msg.attempt, accepted=True)

    # ------------------------------------------------------------------ control clients

    async def _serve_control(self, conn: p.Connection) -> None:
        while (msg := await conn.recv()) is not None:
            if isinstance(msg, p.Subscribe):
                await self._stream(conn, msg)
                return
            if isinstance(msg, p.StatusRequest) and msg.as_json:
                history = await self.history()
                document = self.status.json(self.journal.seq, msg.limit, history)
                for start in range(0, len(document), p.OUTPUT_CHUNK):
                    end = start + p.OUTPUT_CHUNK
                    conn.send_nowait(p.StatusJson(data=document[start:end], more=end < len(document)))
                await conn.writer.drain()
            elif isinstance(msg, p.StatusRequest):
                history = await self.history()
                await conn.send(self.status.reply(self.journal.seq, msg.limit, history))
            elif isinstance(msg, p.GcRequest):
                await conn.send(await self.collect())
            elif isinstance(msg, p.RerunRequest):
                reply = self.sched.rerun(msg.commit)
                self._carry_out()
                await self.journal.durable()
                await conn.send(reply)
                self._dispatch()
            elif isinstance(msg, p.CancelRequest):
                reply = self.sched.cancel(msg.job_id)
                self._carry_out()
                if reply.ok and reply.job is not None and reply.job.state == "cancelled":  # no longer queued
                    await self.journal.durable()
                await conn.send(reply)
                self._dispatch()  # a bisection may have queued another commit in its place
            elif isinstance(msg, (p.TestsRequest, p.HistoryRequest, p.FlakyRequest)):
                for answer in await self.queries.answer(msg):
                    conn.send_nowait(answer)
                    await conn.writer.drain()
            elif isinstance(msg, p.TryRequest):
                reply = self.sched.try_commit(msg.commit)
                self._carry_out()
                await self.journal.durable()
                await conn.send(reply)
                self._dispatch()
            elif isinstance(msg, p.LogRequest):
                await self._send_log(conn, msg)
                return
            elif isinstance(msg, p.Notice):
                self.journal.publish(msg.kind, {"message": f"{msg.name}: {msg.message}"})
                await conn.send(p.Reply(ok=True))
            else:
                raise p.ProtocolError(f"a control client may not send {type(msg).__name__}")

    def _wake_log_followers(self, job_id: int) -> None:
        for wake in self.log_followers.get(job_id, ()):
            wake.set()

    async def _send_log(self, conn: p.Connection, req: p.LogRequest) -> None:
        """The job's stored output from ``req.offset``, then (following) what it prints until it is final, then a
        reply with the job. Read from the log on the logs' thread (behind the writes before it), never ahead of
        what the scheduler counts as written, so a lost attempt's emptied log is seen as such (``log_size``
        back below our offset, or another attempt begun): the next attempt's output is then sent from offset 0."""
        job = self.sched.jobs.get(req.job_id)
        if job is None:
            await conn.send(p.Reply(ok=False, message=f"no job {req.job_id}"))
            return
        offset, attempt = req.offset, job.attempts
        wake = asyncio.Event()
        self.log_followers.setdefault(job.id, set()).add(wake)
        closed = asyncio.ensure_future(conn.reader.read(1))
        try:
            while not closed.done():
                wake.clear()
                final = job.state in p.FINAL_STATES
                if job.attempts != attempt or (job.log_size < offset and not final):
                    offset, attempt = 0, job.attempts  # the attempt was lost, and its output with it
                data = await self.logs.read(job.id, offset, p.OUTPUT_CHUNK, None if final else job.log_size)
                if data:
                    await conn.send(p.JobOutput(job_id=job.id, offset=offset, data=data))
                    offset += len(data)
                    continue
                if final or not req.follow:
                    await self.journal.durable()  # the state we tell is one a crash cannot take back
                    await conn.send(p.Reply(ok=True, message=job.state, job=job))
                    return
                woken = asyncio.ensure_future(wake.wait())
                await asyncio.wait([closed, woken], return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
        finally:
            closed.cancel()
            followers = self.log_followers.get(job.id)
            if followers is not None:
                followers.discard(wake)
                if not followers:
                    del self.log_followers[job.id]

    async def _stream(self, conn: p.Connection, sub_msg: p.Subscribe) -> None:
        """Send every event after the subscriber's cursor, then live ones; no gaps, no duplicates."""
        sub = Subscriber(conn=conn, cursor=sub_msg.after_seq, output=sub_msg.output)
        self.subscribers.add(sub)
        closed = asyncio.ensure_future(conn.reader.read(1))
        try:
            while not closed.done():
                sub.wake.clear()
                deleted = sub.cursor < self.journal.pruned_through
                events = [] if deleted else await self.journal.events_after(sub.cursor)
                if deleted or events and events[0].seq != sub.cursor + 1:
                    # Retention deleted events this subscriber has not seen (it resumed from before them, or fell
                    # that far behind): the state as it is now, instead of a gap. (Events are numbered one by one.)
                    history = await self.history()
                    sub.cursor = self.journal.seq
                    conn.send_nowait(self.status.reply(sub.cursor, 0, history))
                    continue
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


def _more_descriptors() -> None:
    """Raise our limit on open files to what we may (often 1024 of 500,000): connections yet to say hello must
    not use up the descriptors that peers with the token need (Door.admit bounds them by rate, not number)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 16 if hard == resource.RLIM_INFINITY else min(hard, 1 << 16)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def run_dispatcher(state: StateDir, tcp: p.TcpAddress | None, store: str = "", lease_seconds: float = 5.0,
                         advertise: str = "", **kwargs) -> None:
    """Run until cancelled or signalled (SIGINT/SIGTERM): alone on the state dir's SQLite file, or, with a
    ``postgresql://`` store, as one dispatcher of the group sharing it (``group``)."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if store:
        from .group import run_group_member

        await run_group_member(state, tcp, store, lease_seconds, advertise, stop, **kwargs)
        log.info("dispatcher stopped")
        return
    dispatcher = Dispatcher(state, tcp, **kwargs)
    await dispatcher.start()
    try:
        await stop.wait()
    finally:
        await dispatcher.stop()
        log.info("dispatcher stopped")

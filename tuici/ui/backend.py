"""What the control center needs from the engine, and the real thing behind it.

The app talks only to a ``Backend``: ``LiveBackend`` starts (or attaches to) the real
dispatcher, observer and runners through the shared supervisor and control client;
tests hand the app a recorded one, so they need no processes and stay deterministic.
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

from .. import testcases
from .. import wire as p
from ..errors import NoToken, SupervisorError
from ..statedir import StateDir
from ..supervisor import Supervisor, dispatcher_running
from ..wire import Control, NoDispatcher, Query, endpoint_for

ProcessListener = Callable[[str, str, str], None]  # (kind, name, message), as the supervisor reports them


class BackendError(Exception):
    """The engine could not be started, reached or asked: the message says why, for the user."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent  # asking again cannot help (a wrong token, another protocol version)


@dataclass(frozen=True)
class ProcessInfo:
    """A process this control center supervises."""

    name: str
    kind: str  # dispatcher, observer, runner
    state: str  # starting, running, stopping, stopped, restarting
    pid: int | None


class Backend(ABC):
    attached = False  # the processes belong to someone else (`tuici serve`): quitting leaves them running
    can_supervise = True  # `a` and `x` can start and kill runners
    on_process_event: ProcessListener | None = None

    @property
    @abstractmethod
    def label(self) -> str:
        """The repository (the commits panel shows its name)."""

    @abstractmethod
    async def start(self) -> None:
        """Start the engine, or attach to a running one; ``BackendError`` if neither works."""

    @abstractmethod
    async def status(self, limit: int = 0) -> p.StatusReply: ...

    async def first_page(self) -> p.StatusReply | None:
        """The newest jobs and their commits (a status limited to ``FIRST_PAGE`` jobs), fetched early so that the
        first frame shows them while the whole history is still on its way; None if there is none to give."""
        return None

    @abstractmethod
    def events(self, after_seq: int) -> AsyncIterator[p.Event | p.StatusReply]:
        """Every event after ``after_seq``, then live ones, until the connection drops; a status first when
        retention deleted some of those events (see ``Control.subscribe``)."""

    @abstractmethod
    async def rerun(self, sha: str) -> p.Reply: ...

    @abstractmethod
    async def cancel(self, job_id: int) -> p.Reply: ...

    @abstractmethod
    async def tests(self, job_id: int) -> list[p.TestReport]:
        """The job's test cases, failures first, the failing and flaky ones with their history strip."""

    @abstractmethod
    async def add_runner(self) -> str:
        """Start a runner; its name."""

    @abstractmethod
    async def kill_runner(self, name: str, force: bool) -> None: ...

    @abstractmethod
    def processes(self) -> dict[str, ProcessInfo]:
        """The processes this control center supervises, by name (none when attached)."""

    @abstractmethod
    def job_log(self, job_id: int) -> Path: ...

    @abstractmethod
    async def stop(self) -> None:
        """Stop every process this control center started; leave the others running."""


CONNECTION_ERRORS = (NoDispatcher, OSError, p.ProtocolError)
WORKERS_AFTER = 1.0  # seconds the observer and runners wait for the app's whole status at most
# Jobs in the first page: more rows than a terminal shows. The whole status of 10,000 jobs (5 MB, ~60 ms to
# decode and ~40 ms to load into the model, on the process that is drawing its first frame) comes after it.
FIRST_PAGE = 200


class FirstStatus:
    """The first page of the status (``FIRST_PAGE`` jobs), fetched on a thread while the app is still importing
    Textual (which holds the event loop): from the dispatcher as soon as it serves, or, when the app has just
    started the dispatcher on an existing SQLite store, read from that store at once. The dispatcher loads the
    same file, but takes ~0.3 s (~0.6 s on a busy machine) to start and load 10,000 jobs before it serves. A
    daemon thread: quitting never waits for it."""

    PATIENCE = 15.0  # seconds to wait for the dispatcher to serve; the supervisor reports why it did not

    def __init__(self, state: StateDir, store: Path | None = None):
        loop = asyncio.get_running_loop()
        self._reply: asyncio.Future[p.StatusReply | None] = loop.create_future()
        self._cancelled = threading.Event()
        threading.Thread(target=self._fetch, args=(state, store, loop), name="tuici-first-status",
                         daemon=True).start()

    def _fetch(self, state: StateDir, store: Path | None, loop: asyncio.AbstractEventLoop) -> None:
        reply = None
        try:
            if store is not None and (reply := _stored_page(store)) is not None:
                return
            deadline = time.monotonic() + self.PATIENCE
            while not state.address() and time.monotonic() < deadline:
                if self._cancelled.wait(0.01):
                    return
            with Query(endpoint_for(state)) as query:
                reply = query.status(FIRST_PAGE)
        except Exception:  # no token, refused, gone: the app asks again and says what is wrong
            pass
        finally:
            try:
                loop.call_soon_threadsafe(self._deliver, reply)
            except RuntimeError:  # the loop is closed: the app is gone
                pass

    def _deliver(self, reply: p.StatusReply | None) -> None:
        if not self._reply.done():
            self._reply.set_result(reply)

    async def take(self) -> p.StatusReply | None:
        """The first page, or None if it could not be fetched."""
        return await self._reply

    def cancel(self) -> None:
        self._cancelled.set()
        self._deliver(None)


def _stored_page(path: Path) -> p.StatusReply | None:
    """The first page as the SQLite store at ``path`` has it (a dispatcher not yet started has nothing newer; its
    runners come later), or None if it cannot be read."""
    import sqlite3

    from ..store import newest_jobs

    try:
        newest = newest_jobs(path, FIRST_PAGE)
    except (sqlite3.Error, OSError):  # being made by the dispatcher, say: it serves the first page itself
        return None
    return p.StatusReply(repo_url="", last_seq=newest.last_seq, commits=newest.commits, jobs=newest.jobs,
                         runners=[], bisections=newest.bisections)


class LiveBackend(Backend):
    def __init__(self, repo: Path, state: StateDir, runners: int, dispatcher_args: list[str] | None = None,
                 runner_args: list[str] | None = None):
        self.repo = repo
        self.state = state
        self.runners = runners
        self.dispatcher_args = dispatcher_args or []
        self.runner_args = runner_args or []
        self.supervisor: Supervisor | None = None
        self._control: Control | None = None
        self._requests = asyncio.Lock()  # one control connection answers one request at a time
        self._notices: set[asyncio.Task] = set()
        self._launched = False
        self._failure: BackendError | None = None
        self._whole_status = asyncio.Event()
        self._workers: asyncio.Task | None = None  # see _start_workers
        self._first: FirstStatus | None = None

    @property
    def label(self) -> str:
        return str(self.repo)

    async def launch(self) -> None:
        """Start the dispatcher, or find a running engine, without waiting for it to serve: `tuici` calls
        this before importing Textual, so that the dispatcher loads its history while the app loads. A
        failure is kept for ``start`` to raise, where the app shows it."""
        if self._launched:
            return
        self._launched = True
        store = None
        if dispatcher_running(self.state):
            self.attached = True
            self.can_supervise = False  # the supervisor of `tuici serve` owns the runners' names
        else:
            self.supervisor = Supervisor(self.repo, self.state, runners=self.runners, on_event=self._process_event,
                                         dispatcher_args=self.dispatcher_args, runner_args=self.runner_args)
            if not self.supervisor.shared_store and self.state.db.is_file():
                store = self.state.db  # made by an earlier dispatcher: the one starting now loads it as it is
            try:
                await self.supervisor.spawn_dispatcher()
            except (SupervisorError, OSError) as exc:
                await self.supervisor.stop()
                self._failure = BackendError(f"could not start the engine: {exc}")
                return
        self._first = FirstStatus(self.state, store)

    async def start(self) -> None:
        await self.launch()
        if self._failure is not None:
            raise self._failure
        if self.supervisor is not None:
            try:
                await self.supervisor.serving()
            except SupervisorError as exc:
                await self.supervisor.stop()
                raise BackendError(f"could not start the engine: {exc}") from None
            self._workers = asyncio.ensure_future(self._start_workers())
        try:
            self._control = Control.for_state(self.state)
        except (NoDispatcher, NoToken) as exc:
            raise BackendError(str(exc)) from None

    async def _start_workers(self) -> None:
        """The observer and the runners, once the app has the whole status (or after a second without).

        The first frame needs neither, and on two cores three interpreters starting alongside it made it
        ~0.3 s later. A failure to start them is told as a process event, like a later crash of theirs.
        """
        try:
            await asyncio.wait_for(self._whole_status.wait(), WORKERS_AFTER)
        except asyncio.TimeoutError:
            pass
        try:
            await self._supervisor().spawn_workers()
        except (SupervisorError, OSError) as exc:
            self._process_event("process.exited", "observer and runners", f"could not be started: {exc}")

    @property
    def control(self) -> Control:
        if self._control is None:
            raise BackendError("not connected to a dispatcher")
        return self._control

    async def _request(self, call):
        async with self._requests:
            try:
                return await call(self.control)
            except CONNECTION_ERRORS as exc:
                raise BackendError(f"the dispatcher did not answer: {exc}") from None
            except p.RefusedError as exc:
                raise BackendError(f"the dispatcher refused this control center: {exc}", exc.permanent) from None

    async def first_page(self) -> p.StatusReply | None:
        first, self._first = self._first, None
        return None if first is None else await first.take()

    async def status(self, limit: int = 0) -> p.StatusReply:
        reply = await self._request(lambda control: control.status(limit))
        if not limit:
            self._whole_status.set()
        return reply

    async def events(self, after_seq: int) -> AsyncIterator[p.Event | p.StatusReply]:
        try:
            async for message in self.control.subscribe(after_seq=after_seq):
                if isinstance(message, (p.Event, p.StatusReply)):
                    yield message
        except p.RefusedError as exc:
            raise BackendError(f"the dispatcher refused this control center: {exc}", exc.permanent) from None

    async def rerun(self, sha: str) -> p.Reply:
        return await self._request(lambda control: control.rerun(sha))

    async def cancel(self, job_id: int) -> p.Reply:
        return await self._request(lambda control: control.cancel(job_id))

    async def tests(self, job_id: int) -> list[p.TestReport]:
        request = p.TestsRequest(job_id=job_id, history=testcases.HISTORY_STRIP)
        answer = await self._request(lambda control: control.pieces(request))
        if isinstance(answer[0], p.Reply):
            raise BackendError(answer[0].message)
        return [case for piece in answer for case in p.expect(piece, p.TestsReply).tests]

    def _supervisor(self) -> Supervisor:
        if self.supervisor is None:
            raise BackendError("attached to processes started elsewhere (tuici serve): manage runners there")
        return self.supervisor

    async def add_runner(self) -> str:
        try:
            return (await self._supervisor().add_runner()).name
        except OSError as exc:
            raise BackendError(f"cannot start a runner process: {exc}") from None

    async def kill_runner(self, name: str, force: bool) -> None:
        supervisor = self._supervisor()
        if name not in supervisor.children:
            raise BackendError(f"{name} was not started by this control center")
        await supervisor.kill(name, force=force)

    def processes(self) -> dict[str, ProcessInfo]:
        if self.supervisor is None:
            return {}
        return {c.name: ProcessInfo(c.name, c.kind, c.state, c.pid) for c in self.supervisor.children.values()}

    def job_log(self, job_id: int) -> Path:
        return self.state.job_log(job_id)

    async def stop(self) -> None:
        if self._first is not None:
            self._first.cancel()
        tasks = [*self._notices, *filter(None, [self._workers])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._control is not None:
            await self._control.close()
            self._control = None
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None

    def _process_event(self, kind: str, name: str, message: str) -> None:
        """Show it here, and tell the dispatcher so that everyone following its events sees it too."""
        if self.on_process_event is not None:
            self.on_process_event(kind, name, message)
        if self._control is not None:
            task = asyncio.ensure_future(self._notify(kind, name, message))
            self._notices.add(task)
            task.add_done_callback(self._notices.discard)

    async def _notify(self, kind: str, name: str, message: str) -> None:
        try:
            await self._request(lambda control: control.notice(kind, name, message))
        except BackendError:
            pass  # the dispatcher is down: it is the one being restarted, and the app shows that already

"""What the control center needs from the engine, and the real thing behind it.

The app talks only to a ``Backend``: ``LiveBackend`` starts (or attaches to) the real
dispatcher, observer and runners through the shared supervisor and control client;
tests hand the app a recorded one, so they need no processes and stay deterministic.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

from .. import protocol as p
from ..client import Control, NoDispatcher
from ..statedir import StateDir
from ..supervisor import Supervisor, SupervisorError, dispatcher_running

ProcessListener = Callable[[str, str, str], None]  # (kind, name, message), as the supervisor reports them


class BackendError(Exception):
    """The engine could not be started, reached or asked: the message says why, for the user."""


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

    @abstractmethod
    def events(self, after_seq: int) -> AsyncIterator[p.Event]:
        """Every event after ``after_seq``, then live ones, until the connection drops."""

    @abstractmethod
    async def rerun(self, sha: str) -> p.Reply: ...

    @abstractmethod
    async def cancel(self, job_id: int) -> p.Reply: ...

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

    @property
    def label(self) -> str:
        return str(self.repo)

    async def start(self) -> None:
        if dispatcher_running(self.state):
            self.attached = True
            self.can_supervise = False  # the supervisor of `tuici serve` owns the runners' names
        else:
            self.supervisor = Supervisor(self.repo, self.state, runners=self.runners, on_event=self._process_event,
                                         dispatcher_args=self.dispatcher_args, runner_args=self.runner_args)
            try:
                await self.supervisor.start()
            except (SupervisorError, OSError) as exc:
                await self.supervisor.stop()
                raise BackendError(f"could not start the engine: {exc}") from None
        try:
            self._control = Control.for_state(self.state)
        except NoDispatcher as exc:
            raise BackendError(str(exc)) from None
        except SystemExit as exc:  # resolve_token's message when there is no token to be found
            raise BackendError(str(exc.code)) from None

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

    async def status(self, limit: int = 0) -> p.StatusReply:
        return await self._request(lambda control: control.status(limit))

    async def events(self, after_seq: int) -> AsyncIterator[p.Event]:
        async for message in self.control.subscribe(after_seq=after_seq):
            if isinstance(message, p.Event):
                yield message

    async def rerun(self, sha: str) -> p.Reply:
        return await self._request(lambda control: control.rerun(sha))

    async def cancel(self, job_id: int) -> p.Reply:
        return await self._request(lambda control: control.cancel(job_id))

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
        for task in self._notices:
            task.cancel()
        await asyncio.gather(*self._notices, return_exceptions=True)
        if self._control is not None:
            await self._control.close()
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

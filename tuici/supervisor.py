"""Starts, watches and stops the dispatcher, observer and runners as child processes.

Shared by ``tuici serve`` and the control center. A child that dies unasked is
restarted with backoff. The supervisor makes itself a child subreaper, so test
processes orphaned by a killed runner are handed to it and killed, never leaked.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import wire as p
from .errors import SupervisorError
from .lazy import LazyModule
from .procs import SUPERVISED_BY, become_subreaper, is_zombie, kill_group
from .statedir import StateDir, repo_cache

if TYPE_CHECKING:
    import psutil
else:
    psutil = LazyModule("psutil")  # first needed by the orphan sweep, once a child exits (or after SWEEP_BACKSTOP)

log = logging.getLogger("tuici.supervisor")

STOP_GRACE = 5.0
SWEEP_BACKSTOP = 30.0  # seconds between orphan sweeps while no process of ours exits
MARK = "TUICI_SUPERVISOR"  # inherited by everything we start, so strays can be told from others' processes
BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)


def dispatcher_running(state: StateDir) -> bool:
    """Whether some process holds this state dir's dispatcher lock."""
    try:
        fd = os.open(state.lock_file, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@dataclass
class Child:
    name: str
    kind: str  # dispatcher, observer, runner
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    state: str = "starting"  # starting, running, stopping, stopped, restarting
    wanted: bool = True
    restarts: int = 0
    started_at: float = 0.0
    monitor: asyncio.Task | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None


class Supervisor:
    def __init__(
        self,
        repo: Path,
        state: StateDir,
        runners: int = 1,
        on_event: Callable[[p.NoticeKind, str, str], None] | None = None,
        dispatcher_args: list[str] | None = None,
        listen: str | None = None,
        runner_args: list[str] | None = None,
    ):
        self.repo = repo
        self.state = state.ensure()
        self.initial_runners = runners
        self.on_event = on_event or (lambda kind, name, message: None)
        self.dispatcher_args = dispatcher_args or []
        # One of a group of dispatchers sharing a PostgreSQL store (see tuici.dispatcher.group)?
        self.shared_store = "--store" in self.dispatcher_args or bool(os.environ.get("TUICI_STORE"))
        self.runner_args = runner_args or []
        self.listen = listen  # a TCP address for components on other machines; local ones use the Unix socket
        self.runners_dir = repo_cache(self.state.path.parent) / "runners"
        if self.runners_dir.is_relative_to(repo.resolve()):
            raise SupervisorError(f"tuici's cache {self.runners_dir} is inside the repository {repo}: a job's "
                                  "checkout must not be; set TUICI_CACHE_DIR to a directory elsewhere")
        self.children: dict[str, Child] = {}
        self.address = str(p.UnixAddress(str(self.state.socket)))  # what the components we start connect to
        self._listeners: list[socket.socket] = []  # the dispatcher's, held for its restarts
        self._next_runner = 1
        self._stopping = False
        self._sweeper: asyncio.Task | None = None
        self._child_exited = asyncio.Event()

    # ------------------------------------------------------------------ public

    async def start(self) -> str:
        """Start every process at once and return the dispatcher's address once it serves.

        We bind the dispatcher's sockets and hand them down, so the others need not wait for the dispatcher to
        be up: they connect while it starts (into the socket's backlog) and are taken in as soon as it is.
        A restarted dispatcher gets the same sockets: clients wait for it instead of being refused.
        """
        await self.spawn_dispatcher()
        await self.spawn_workers()
        return await self.serving()

    async def spawn_dispatcher(self) -> None:
        """Bind the dispatcher's socket and start the dispatcher, without waiting for it to serve."""
        become_subreaper()
        if dispatcher_running(self.state):
            raise SupervisorError(f"a dispatcher is already running for {self.repo} at {self.state.address()}")
        self.state.address_file.unlink(missing_ok=True)  # the dispatcher writes it when it serves
        self.state.token(create=True)
        self._listeners = self._bind()
        await self._spawn(self._child("dispatcher", "dispatcher", self._dispatcher_argv()))

    async def spawn_workers(self) -> None:
        """Start the observer and the initial runners (they may connect before the dispatcher serves; with a
        shared store, not before: the dispatcher first puts the group's token in the state dir)."""
        if self.shared_store:
            await self._wait_until_serving(self.children["dispatcher"])
        await self._spawn(self._child("observer", "observer",
                                      self._component_argv("observer", "observer", str(self.repo))))
        for _ in range(self.initial_runners):
            await self.add_runner()

    async def serving(self) -> str:
        """Return the dispatcher's address once it serves (``SupervisorError`` if it exits or stays silent);
        from then on, sweep for orphans."""
        await self._wait_until_serving(self.children["dispatcher"])
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_orphans())
        return self.address

    async def add_runner(self) -> Child:
        name = f"runner-{self._next_runner}"
        self._next_runner += 1
        argv = self._component_argv("runner", name, "--name", name, "--workdir", str(self.runners_dir / name),
                                    *self.runner_args)
        child = self._child(name, "runner", argv)
        await self._spawn(child)
        return child

    async def kill(self, name: str, force: bool = False) -> None:
        """Stop a child for good (SIGTERM, or SIGKILL when forced); it is not restarted."""
        child = self.children.get(name)
        if child is None:
            raise KeyError(name)
        child.wanted = False
        await self._terminate(child, signal.SIGKILL if force else signal.SIGTERM)
        self.children.pop(name, None)

    async def stop(self) -> None:
        """Stop everything: runners and observer first, then the dispatcher, then any stray descendant."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        others = [c for c in self.children.values() if c.kind != "dispatcher"]
        for c in self.children.values():
            c.wanted = False
        await asyncio.gather(*(self._terminate(c) for c in others))
        if "dispatcher" in self.children:
            await self._terminate(self.children["dispatcher"])
        if self._listeners:
            p.remove_socket_file(str(self.state.socket))
        for sock in self._listeners:
            sock.close()
        kill_descendants()

    # ------------------------------------------------------------------ internals

    def _child(self, name: str, kind: str, argv: list[str]) -> Child:
        child = Child(name=name, kind=kind, argv=argv)
        self.children[name] = child
        return child

    def _bind(self) -> list[socket.socket]:
        """The dispatcher's Unix socket in the state dir, and a TCP socket if we were given an address."""
        tcp = None
        if self.listen is not None:
            try:
                tcp = p.parse_address(self.listen)
            except ValueError as exc:
                raise SupervisorError(str(exc)) from None
            if not isinstance(tcp, p.TcpAddress):
                raise SupervisorError(f"the dispatcher listens on {self.state.socket} anyway; --listen takes HOST:PORT")
        try:
            return p.listeners(str(self.state.socket), tcp if isinstance(tcp, p.TcpAddress) else None)
        except OSError as exc:
            raise SupervisorError(f"cannot listen on {exc.filename}: {exc.strerror}") from None

    def _dispatcher_argv(self) -> list[str]:
        argv = [sys.executable, "-m", "tuici", "dispatcher", "--state", str(self.state.path), "--repo", str(self.repo),
                "--log-file", str(self.state.component_log("dispatcher"))]
        for sock in self._listeners:
            argv += ["--listen-fd", str(sock.fileno())]
            if sock.family != socket.AF_UNIX:
                argv += ["--listen", str(p.address_of(sock))]
        return argv + self.dispatcher_args

    def _component_argv(self, kind: str, name: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "tuici", kind, *args, "--dispatcher", self.address,
                "--state", str(self.state.path), "--log-file", str(self.state.component_log(name))]

    async def _spawn(self, child: Child) -> None:
        logfile = open(self.state.component_log(child.name), "ab", buffering=0)
        try:
            env = {k: v for k, v in os.environ.items() if k != "TUICI_TOKEN"}
            env[MARK] = env[SUPERVISED_BY] = str(os.getpid())
            # No preexec_fn (the child asks to die with us itself, see die_with_supervisor): Python can then
            # spawn with vfork, about a fifth of the time of a fork, while the others start.
            child.proc = await asyncio.create_subprocess_exec(
                *child.argv, stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=logfile, env=env,
                start_new_session=True,
                pass_fds=[sock.fileno() for sock in self._listeners] if child.kind == "dispatcher" else (),
            )
        finally:
            logfile.close()
        child.state = "running"
        child.started_at = time.time()
        log.info("started %s (pid %s)", child.name, child.proc.pid)
        self._event("process.started", child, f"pid {child.proc.pid}")
        child.monitor = asyncio.ensure_future(self._monitor(child, child.proc))

    async def _monitor(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._child_exited.set()
        if not child.wanted or self._stopping or child.proc is not proc:
            child.state = "stopped"
            return
        delay = BACKOFF[min(child.restarts, len(BACKOFF) - 1)]
        if time.time() - child.started_at > 30:
            delay = BACKOFF[0]  # it ran fine for a while: this is a fresh failure, not a crash loop
        child.restarts += 1
        child.state = "restarting"
        log.warning("%s (pid %s) exited with %s; restarting in %.1f s", child.name, proc.pid, code, delay)
        self._event("process.exited", child, f"pid {proc.pid} exited with {code}; restarting in {delay:.1f} s")
        await asyncio.sleep(delay)
        if child.wanted and not self._stopping:
            await self._spawn(child)
            self._event("process.restarted", child, f"restart {child.restarts}, pid {child.proc.pid}")

    async def _terminate(self, child: Child, sig: int = signal.SIGTERM) -> None:
        proc = child.proc
        child.state = "stopping"
        if proc is not None and proc.returncode is None:
            kill_group(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except asyncio.TimeoutError:
                log.warning("%s (pid %s) ignored SIGTERM; killing it", child.name, proc.pid)
                kill_group(proc.pid, signal.SIGKILL)
                await proc.wait()
            self._event("process.stopped", child, f"pid {proc.pid} stopped")
        if child.monitor is not None:
            await asyncio.gather(child.monitor, return_exceptions=True)
        child.state = "stopped"

    async def _wait_until_serving(self, child: Child, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.proc is not None and child.proc.returncode is not None:
                raise SupervisorError(
                    f"the dispatcher exited with {child.proc.returncode}: "
                    f"{_tail(self.state.component_log(child.name))}"
                )
            if self.state.address():
                return
            await asyncio.sleep(0.01)
        raise SupervisorError(f"the dispatcher did not start serving within {timeout:.0f} s")

    async def _sweep_orphans(self) -> None:
        """Kill processes orphaned into our care (test commands of a runner that was SIGKILLed).

        Orphans are handed to us when a process of ours dies, so we sweep when a child exits, then again
        shortly after each sweep that killed something (the killed leave their own children to us), and
        otherwise only now and then, as a backstop: an idle supervisor does not wake up every second.
        """
        while True:
            try:
                await asyncio.wait_for(self._child_exited.wait(), SWEEP_BACKSTOP)
            except asyncio.TimeoutError:
                pass
            self._child_exited.clear()
            again = 0.05
            while _sweep({c.proc.pid for c in self.children.values() if c.proc is not None}):
                await asyncio.sleep(again)
                again = min(again * 4, 2.0)

    def _event(self, kind: p.NoticeKind, child: Child, message: str) -> None:
        try:
            self.on_event(kind, child.name, message)
        except Exception:  # a broken listener must not take supervision down with it
            log.exception("event listener failed")


def _strays(recursive: bool) -> list[psutil.Process]:
    """Processes below this one that this supervisor (not some other code in the process) started."""
    mark = str(os.getpid())
    found = []
    try:
        procs = psutil.Process().children(recursive=recursive)
    except psutil.Error:
        return []
    for proc in procs:
        try:
            if proc.environ().get(MARK) == mark:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _child_pids() -> set[int] | None:
    """This process's children, from /proc/self/task/*/children: microseconds, where psutil's look at every
    process costs milliseconds (a backstop sweep of an idle supervisor is then nearly free); None where the
    kernel does not list them."""
    if not os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        return None
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as fh:
                pids.update(int(pid) for pid in fh.read().split())
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return pids


def _sweep(ours: set[int]) -> bool:
    """Kill and reap our strays other than ``ours``; whether there were any."""
    children = _child_pids()
    if children is not None and children <= ours:
        return False
    found = False
    for proc in _strays(recursive=False):
        if proc.pid not in ours:
            _kill_and_reap(proc)
            found = True
    return found


_killed: set[int] = set()  # strays we killed and still have to reap


def _kill_and_reap(proc: psutil.Process) -> None:
    try:
        if not is_zombie(proc):
            kill_group(os.getpgid(proc.pid))
            proc.kill()
        _killed.add(proc.pid)
    except (psutil.Error, ProcessLookupError, PermissionError):
        pass
    for pid in list(_killed):
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                _killed.discard(pid)
        except ChildProcessError:
            _killed.discard(pid)


def kill_descendants() -> None:
    """SIGKILL every process this supervisor started, down the tree, and reap orphans handed to us."""
    for proc in _strays(recursive=True):
        try:
            proc.kill()
        except psutil.Error:
            pass
    _sweep(ours=set())


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


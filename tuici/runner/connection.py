"""The runner: registers with the dispatcher, tests one commit at a time in its own workspace.

A job's output goes to a local spool file first and is sent from there, so a
dispatcher that goes away loses nothing: on reconnect the runner resends from the
offset the dispatcher reports, then delivers the result it has been holding, its
test cases in pieces ahead of it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from .. import testcases
from .. import wire as p
from ..errors import ComponentError
from ..procs import become_subreaper
from ..statedir import cache_root
from . import landlock
from .environments import EnvCache, find_uv
from .job import Control, Job, Outcome, RunnerPlaces
from .sandbox import find_bwrap, probe
from .spawn import find_setpriv
from .workspace import Workspace

log = logging.getLogger("tuici.runner")

SandboxMode = Literal["auto", "on", "off"]

# While it holds a job a runner heartbeats this often: the dispatcher takes the job back once it heard nothing for
# its heartbeat timeout (the lease, 5 s by default). An idle runner sends nothing and does not wake: its connection
# closing tells the dispatcher at once that it is gone (over TCP, keepalive probes tell when its host vanished),
# and one that hangs idle is found out once it is given a job, which then goes to another runner after the lease.
HEARTBEAT_INTERVAL = 1.0
# The longest a runner waits between two tries to reach its dispatcher. A runner holding a job must be back
# within the restart grace of a dispatcher that restarted (its heartbeat timeout: 5 s, 2 s in the tests), or
# the job is run again; with the jittered doubling up to 5 s, one try that failed just before the dispatcher
# came up could keep a runner away for 3 s more.
RECONNECT_CAP = 1.0
# A command printing a little at a time (pytest: a dot per test) cost a message, and a wake-up of the dispatcher
# and of every viewer, per print: ~1 ms of CPU each, on the cores the tests run on. While the job runs, less
# than OUTPUT_TRICKLE of new output waits up to OUTPUT_LINGER for more before it is sent; the result never waits.
OUTPUT_TRICKLE = 4096
OUTPUT_LINGER = 0.05


@dataclass
class ActiveJob:
    assign: p.Assign
    spool: Path
    size: int = 0
    result: p.JobResult | None = None
    cases: list[p.TestCase] = field(default_factory=list)  # sent in pieces ahead of the result
    control: Control = field(default_factory=Control)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the result is in
    task: asyncio.Task | None = None

    def cancel(self) -> None:
        c = self.control
        c.cancelled = True
        c.stop.set()
        # A spawn under way must not be interrupted (the process would be lost): it sees ``stop`` once done.
        if c.pgid is None and not c.spawning and self.task is not None and self.result is None:
            self.task.cancel()


class Runner:
    def __init__(self, endpoint: p.Endpoint, name: str, workdir: Path, hide: tuple[Path, ...] = (),
                 sandbox: SandboxMode = "auto", envs: EnvCache | None = None):
        self.endpoint = endpoint
        self.name = name
        self.workdir = workdir
        self.hide = hide  # what the code under test must not see: the state dir, tuici's cache
        self.sandbox = sandbox
        self.envs = envs or EnvCache(cache_root())
        self.places: RunnerPlaces | None = None  # once the sandbox is probed
        self.workspace = Workspace(workdir)
        self.job: ActiveJob | None = None
        self.stopping = asyncio.Event()
        self.new_job = asyncio.Event()
        self.holding = asyncio.Event()  # set while we hold a job: we heartbeat
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ connection

    async def run(self) -> None:
        become_subreaper()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.workdir / "runner.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ComponentError(f"{self.workdir} is in use by another runner") from None
        self.places = await asyncio.to_thread(self._places)
        try:
            await p.reconnect(self._connect, self.stopping, cap=RECONNECT_CAP)
        finally:
            if self.job is not None:
                self.job.cancel()
                if self.job.task is not None:
                    await asyncio.gather(self.job.task, return_exceptions=True)
            await asyncio.to_thread(self.workspace.close)

    def _places(self) -> RunnerPlaces:
        """Probe the sandbox once: with ``auto``, a machine that cannot build one runs jobs without it."""
        bwrap, because, scoped = None, None, False
        if self.sandbox == "off":
            because = "the runner was started with --sandbox off"
        else:
            bwrap = find_bwrap()
            scoped = landlock.available()
            problem = probe(bwrap, landlock.scope_self if scoped else None)
            if problem is not None:
                if self.sandbox == "on":
                    raise ComponentError(f"--sandbox on, but this machine cannot build one: {problem}")
                bwrap, because = None, f"this machine cannot build one: {problem}"
                log.warning("test commands run without a sandbox: %s", because)
        return RunnerPlaces(name=self.name, workdir=self.workdir, hide=self.hide, envs=self.envs, bwrap=bwrap,
                            unsandboxed_because=because, uv=find_uv(), landlock=scoped and bwrap is not None,
                            setpriv=find_setpriv())

    async def _connect(self) -> bool:
        """One session with the dispatcher, if it takes us; whether it did."""
        joined = await p.join(self.endpoint, self._hello(), log)
        if joined is None:
            return False
        conn, welcome = joined
        self.name = welcome.name or self.name
        log.info("registered with dispatcher %s as %s", self.endpoint, self.name)
        await self._session(conn, welcome)
        return True

    def _hello(self) -> p.Hello:
        held = []
        if self.job is not None:
            held.append(p.HeldJob(job_id=self.job.assign.job_id, attempt=self.job.assign.attempt,
                                  finished=self.job.result is not None))
        return p.Hello(role="runner", token=self.endpoint.token, name=self.name, host=socket.gethostname(),
                       pid=os.getpid(), held=held)

    async def _session(self, conn: p.Connection, welcome: p.Welcome) -> None:
        sent = 0
        if self.job is not None:
            if self.job.assign.job_id in welcome.log_offsets:
                sent = welcome.log_offsets[self.job.assign.job_id]
            else:
                log.warning("dispatcher no longer gives us job %s; dropping it", self.job.assign.job_id)
                await self._drop_job()
        tasks = [
            asyncio.ensure_future(self._receive(conn)),
            asyncio.ensure_future(self._heartbeat(conn)),
            asyncio.ensure_future(self._send(conn, sent)),
            asyncio.ensure_future(self.stopping.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None and not isinstance(task.exception(), (ConnectionError, OSError)):
                    log.warning("connection to dispatcher ended: %r", task.exception())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.stopping.is_set():
                try:
                    await asyncio.wait_for(conn.send(p.Bye()), 1.0)
                except (OSError, asyncio.TimeoutError):
                    pass
            await conn.close()

    async def _drop_job(self) -> None:
        job, self.job = self.job, None
        self.holding.clear()
        if job is None:
            return
        job.cancel()
        job.changed.set()
        if job.task is not None:
            await asyncio.gather(job.task, return_exceptions=True)
        job.spool.unlink(missing_ok=True)

    async def _receive(self, conn: p.Connection) -> None:
        while (msg := await conn.recv()) is not None:
            if isinstance(msg, p.Assign):
                if self.job is not None:
                    log.error("dispatcher assigned job %s while job %s runs", msg.job_id, self.job.assign.job_id)
                    continue
                self._start(msg)
            elif isinstance(msg, p.CancelJob):
                if self.job is not None and self.job.assign.job_id == msg.job_id:
                    log.info("cancelling job %s", msg.job_id)
                    self.job.cancel()
            elif isinstance(msg, p.ResultAck):
                if self.job is not None and self.job.assign.job_id == msg.job_id:
                    if not msg.accepted:
                        log.warning("dispatcher rejected our result for job %s: %s", msg.job_id, msg.reason)
                    await self._drop_job()
            else:
                raise p.ProtocolError(f"unexpected {type(msg).__name__} from dispatcher")

    async def _heartbeat(self, conn: p.Connection) -> None:
        while True:
            await self.holding.wait()
            await conn.send(p.Heartbeat())
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _send(self, conn: p.Connection, sent: int) -> None:
        """Stream the job's spool from ``sent`` on, then its result; repeat for each job."""
        current = None
        result_sent = False
        while True:
            job = self.job
            if job is None:
                self.new_job.clear()
                await self.new_job.wait()
                continue
            if job is not current:
                if current is not None:
                    sent = 0
                current, result_sent = job, False
            job.changed.clear()
            if sent < job.size:
                if job.result is None and job.size - sent < OUTPUT_TRICKLE:
                    try:
                        await asyncio.wait_for(job.ended.wait(), OUTPUT_LINGER)
                    except asyncio.TimeoutError:
                        pass
                with open(job.spool, "rb") as fh:
                    fh.seek(sent)
                    while sent < job.size:
                        data = fh.read(min(p.OUTPUT_CHUNK, job.size - sent))
                        await conn.send(p.Output(job_id=job.assign.job_id, attempt=job.assign.attempt,
                                                 offset=sent, data=data))
                        sent += len(data)
                continue
            if job.result is not None and not result_sent:
                for piece, start in enumerate(range(0, len(job.cases), testcases.CASES_PER_PIECE)):
                    await conn.send(p.TestCases(job_id=job.assign.job_id, attempt=job.assign.attempt, piece=piece,
                                                cases=job.cases[start:start + testcases.CASES_PER_PIECE]))
                await conn.send(job.result)
                result_sent = True
            await job.changed.wait()

    # ------------------------------------------------------------------ jobs

    def _start(self, assign: p.Assign) -> None:
        spool = self.workdir / f"job-{assign.job_id}-{assign.attempt}.log"
        spool.unlink(missing_ok=True)
        self.job = ActiveJob(assign=assign, spool=spool)
        self.job.task = asyncio.ensure_future(self._execute(self.job))
        self.new_job.set()
        self.holding.set()

    async def _execute(self, job: ActiveJob) -> None:
        a = job.assign
        started = time.monotonic()
        assert self.places is not None
        run = None
        try:
            with open(job.spool, "ab", buffering=0) as spool:

                def write(data: bytes) -> None:
                    spool.write(data)
                    job.size += len(data)
                    job.changed.set()

                run = Job(a, replace(self.places, name=self.name), self.workspace, job.control, write)
                out = await run.run()
        except Exception as exc:  # noqa: BLE001 - the spool itself failed (a full disk): still a result
            log.exception("job %s failed in the runner", a.job_id)
            out = Outcome(error=f"the runner could not handle the job: {type(exc).__name__}: {exc}")
        duration = time.monotonic() - started
        counts = out.junit.counts if out.junit is not None else None
        passed, failed, skipped = counts if counts else (None, None, None)
        job.cases = out.junit.cases if out.junit is not None else []
        listed = testcases.summary(job.cases)
        job.result = p.JobResult(job_id=a.job_id, attempt=a.attempt, exit_code=out.exit_code, duration_s=duration,
                                 log_size=job.size, passed=passed, failed=failed, skipped=skipped,
                                 error=out.error, cancelled=job.control.cancelled, timed_out=out.timed_out,
                                 env=out.env, env_reused=out.env_reused, test_cases=len(job.cases),
                                 failed_tests=listed.failed_tests, flaky_tests=listed.flaky_tests)
        job.ended.set()
        job.changed.set()
        # Once the result is on its way: the environment's lock, the checkout, the job's /tmp.
        try:
            await asyncio.to_thread(self._release, run)
        except Exception:  # noqa: BLE001 - the next job's checkout starts over
            log.exception("cleaning up after job %s failed", a.job_id)

    def _release(self, run: Job | None) -> None:
        if run is not None:
            run.release()
        self.workspace.release()


def default_workdir(name: str) -> Path:
    return cache_root() / "runners" / name


async def run_runner(endpoint: p.Endpoint, name: str, workdir: Path, hide: tuple[Path, ...] = (),
                     sandbox: SandboxMode = "auto", envs: EnvCache | None = None) -> None:
    runner = Runner(endpoint, name, workdir, hide, sandbox, envs)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runner.stopping.set)
    await runner.run()


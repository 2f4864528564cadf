"""The runner: registers with the dispatcher, tests one commit at a time in its own workspace.

A job's output goes to a local spool file first and is sent from there, so a
dispatcher that goes away loses nothing: on reconnect the runner resends from the
offset the dispatcher reports, then delivers the result it has been holding.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import protocol as p
from .lazy import LazyModule
from .procs import become_subreaper, die_with_parent, kill_all_descendants, kill_group
from .sandbox import Sandbox

# Loaded by the first job: a runner registers ~90 ms sooner without them (GitPython alone is ~80 ms).
git = LazyModule("git")
cfg = LazyModule("tuici.config")
ET = LazyModule("xml.etree.ElementTree")
log = logging.getLogger("tuici.runner")

HEARTBEAT_INTERVAL = 1.0
# A command printing a little at a time (pytest: a dot per test) cost a message, and a wake-up of the dispatcher
# and of every viewer, per print: ~1 ms of CPU each, on the cores the tests run on. While the job runs, less
# than OUTPUT_TRICKLE of new output waits up to OUTPUT_LINGER for more before it is sent; the result never waits.
OUTPUT_TRICKLE = 4096
OUTPUT_LINGER = 0.05
KILL_GRACE = 2.0
MAX_JUNIT_SIZE = 64 * 1024 * 1024


class JobError(Exception):
    """tuici could not run the job (bad config, missing commit): the job ends in error."""


@dataclass
class ActiveJob:
    assign: p.Assign
    spool: Path
    size: int = 0
    result: p.JobResult | None = None
    pgid: int | None = None
    spawning: bool = False  # a cancel now must wait for the pid: interrupting the spawn would lose the process
    cancelled: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the result is in
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # the running command is to be killed
    task: asyncio.Task | None = None

    def cancel(self) -> None:
        self.cancelled = True
        self.stop.set()
        if self.pgid is None and not self.spawning and self.task is not None and self.result is None:
            self.task.cancel()


# Between jobs the clean keeps the __pycache__ directories of tracked directories: Python and pytest check each
# .pyc against its source's mtime and size, and never import one whose source is gone.
KEEP_CACHES = (":(exclude)__pycache__/*", ":(exclude)*/__pycache__/*")
FS_CLOCK_SLACK = 0.05  # seconds file times may lag time.time() (the kernel stamps them with a coarse clock)


class Workspace:
    """A kept clone that shares objects with the repository, set to exactly one commit per job.

    It is cleaned as soon as a job ends (``release``) rather than when the next one starts, which takes
    the clean off the path from a commit to its test.
    """

    def __init__(self, root: Path):
        self.root = root
        self.checkout = root / "checkout"
        self._repo: git.Repo | None = None
        self._url = ""
        self._lock = threading.Lock()  # the prepare of a cancelled job may still be running in its thread
        self._clean_since: float | None = None  # cleaned, and untouched since then; None: it may be dirty
        self._caches: list[Path] = []  # the __pycache__ directories that the clean kept

    def prepare(self, url: str, sha: str) -> Path:
        with self._lock:
            repo = self._open(url)
            clean_since, self._clean_since = self._clean_since, None
            caches, self._caches = self._caches, []
            # A .pyc is trusted if its source's mtime, in whole seconds, is the one it was compiled from: a
            # source rewritten within the second the last job ended in could fool that, so then caches go.
            trusted = clean_since is not None and int(time.time() - FS_CLOCK_SLACK) > int(clean_since)
            try:
                self._check_out(repo, url, sha)
                if clean_since is None or (caches and not trusted):
                    repo.git.clean("-ffdxq")
                elif any(_only_a_cache(cache.parent) for cache in caches):
                    # A directory this commit no longer tracks was kept by its cache alone: it would import
                    # as a namespace package. Cleaning again removes it (it is untracked now) and only it.
                    repo.git.clean("-ffdxq", "--", ".", *KEEP_CACHES)
            except git.GitCommandError as exc:
                raise JobError(f"cannot check out {sha} cleanly: {exc.stderr.strip()}") from None
            return self.checkout

    def release(self) -> None:
        """Clean the checkout, now that the job's processes are all gone."""
        with self._lock:
            if self._repo is None:
                return
            try:
                self._repo.git.clean("-ffdxq", "--", ".", *KEEP_CACHES)
            except git.GitCommandError as exc:
                log.warning("cannot clean %s (the next job will try again): %s", self.checkout, exc.stderr.strip())
                return
            self._caches = _find_caches(self.checkout)
            self._clean_since = time.time()

    def _check_out(self, repo: git.Repo, url: str, sha: str) -> None:
        try:
            # Usually the commit is already here (shared objects): try it first, fetch only if not.
            repo.git.checkout("--force", "--detach", "--quiet", sha)
        except git.GitCommandError:
            try:
                repo.git.fetch("--quiet", "origin", "+refs/heads/*:refs/remotes/origin/*")
                repo.git.cat_file("-e", f"{sha}^{{commit}}")
            except git.GitCommandError:
                raise JobError(f"commit {sha} is not in the repository {url}") from None
            repo.git.checkout("--force", "--detach", "--quiet", sha)

    def _open(self, url: str) -> git.Repo:
        if self._repo is not None and self._url == url:
            return self._repo
        if not url:
            raise JobError("the dispatcher does not know the repository's location yet")
        self._clean_since, self._caches = None, []
        if self.checkout.exists():
            try:
                repo = git.Repo(self.checkout)
                if repo.remotes and repo.remotes.origin.url == url:
                    self._repo, self._url = repo, url
                    return repo
            except (git.InvalidGitRepositoryError, git.NoSuchPathError, AttributeError):
                pass
            shutil.rmtree(self.checkout)
        self.root.mkdir(parents=True, exist_ok=True)
        local = os.path.isdir(url)
        try:
            repo = git.Repo.clone_from(url, self.checkout, no_checkout=True, shared=local, quiet=True)
        except git.GitCommandError as exc:
            raise JobError(f"cannot clone {url}: {exc.stderr.strip()}") from None
        self._repo, self._url = repo, url
        return repo


def _find_caches(top: Path) -> list[Path]:
    """The __pycache__ directories below ``top``."""
    found = []
    for folder, dirs, _ in os.walk(top):
        if folder == str(top) and ".git" in dirs:
            dirs.remove(".git")
        if "__pycache__" in dirs:
            dirs.remove("__pycache__")
            found.append(Path(folder) / "__pycache__")
    return found


def _only_a_cache(folder: Path) -> bool:
    try:
        return os.listdir(folder) == ["__pycache__"]
    except OSError:
        return False


def junit_counts(paths: list[str]) -> tuple[int, int, int] | None:
    """(passed, failed, skipped) summed over the JUnit XML files that exist, or None.

    The code under test wrote them: only regular files of a sane size are read (a FIFO would block
    us for ever), and a file whose counts are not numbers is ignored.
    """
    total = failed = skipped = 0
    found = False
    for path in paths:
        try:
            if not os.path.isfile(path) or os.path.getsize(path) > MAX_JUNIT_SIZE:
                continue
            root = ET.parse(path).getroot()
            suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
            counts = [(int(s.get("tests", 0)), int(s.get("failures", 0)) + int(s.get("errors", 0)),
                       int(s.get("skipped", 0))) for s in suites]
        except (OSError, ET.ParseError, ValueError):
            continue
        for tests, failures, skips in counts:
            found = True
            total, failed, skipped = total + tests, failed + failures, skipped + skips
    if not found:
        return None
    return total - failed - skipped, failed, skipped


class Runner:
    def __init__(self, endpoint: p.Endpoint, name: str, workdir: Path, hide: tuple[Path, ...] = (),
                 sandbox: str = "auto"):
        self.endpoint = endpoint
        self.name = name
        self.workdir = workdir
        self.junit_dir = workdir / "junit"
        self.hide = hide  # what the code under test must not see: the state dir, other runners' work dirs
        self.sandbox = sandbox  # "auto": a sandbox where this machine allows one; "on": required; "off"
        self.unsandboxed_because: str | None = None
        self.workspace = Workspace(workdir)
        self.job: ActiveJob | None = None
        self.stopping = asyncio.Event()
        self.new_job = asyncio.Event()
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ connection

    async def run(self) -> None:
        become_subreaper()
        self.junit_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.workdir / "runner.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"tuici runner: {self.workdir} is in use by another runner") from None
        self._check_sandbox()
        backoff = 0.1
        try:
            while not self.stopping.is_set():
                try:
                    conn, welcome = await p.handshake(self.endpoint, self._hello())
                except p.RefusedError as exc:
                    if exc.permanent:
                        raise SystemExit(f"tuici runner: dispatcher refused us: {exc}") from None
                    log.warning("dispatcher refused us: %s", exc)
                except (OSError, asyncio.TimeoutError, p.ProtocolError) as exc:
                    log.info("cannot reach dispatcher at %s: %s", self.endpoint, exc)
                else:
                    backoff = 0.1
                    self.name = welcome.name or self.name
                    log.info("registered with dispatcher %s as %s", self.endpoint, self.name)
                    await self._session(conn, welcome)
                    continue
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            if self.job is not None:
                self.job.cancel()
                if self.job.task is not None:
                    await asyncio.gather(self.job.task, return_exceptions=True)

    def _check_sandbox(self) -> None:
        if self.sandbox == "off":
            self.unsandboxed_because = "the runner was started with --sandbox off"
            return
        problem = Sandbox(hide=self.hide).probe()
        if problem is None:
            return
        if self.sandbox == "on":
            raise SystemExit(f"tuici runner: --sandbox on, but this machine cannot build one: {problem}")
        self.unsandboxed_because = f"this machine cannot build one: {problem}"
        log.warning("test commands run without a sandbox: %s", self.unsandboxed_because)

    def _sandbox_for(self, assign: p.Assign, checkout: Path) -> Sandbox | None:
        if self.unsandboxed_because is not None:
            return None
        repo = Path(assign.repo_url)
        return Sandbox(hide=self.hide, keep=(checkout, self.junit_dir),
                       read_only=(repo,) if repo.is_absolute() else ())

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

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

    async def _execute(self, job: ActiveJob) -> None:
        a = job.assign
        started = time.monotonic()
        with open(job.spool, "ab", buffering=0) as spool:

            def write(data: bytes) -> None:
                spool.write(data)
                job.size += len(data)
                job.changed.set()

            exit_code = None
            error = ""
            timed_out = False
            counts = None
            try:
                write(f"tuici: {self.name} testing {a.commit[:12]} ({a.branch}), attempt {a.attempt}\n".encode())
                checkout = await asyncio.to_thread(self.workspace.prepare, a.repo_url, a.commit)
                repo_config = cfg.load(lambda name: _read_file(checkout / name))
                junit = str(self.junit_dir / f"{a.job_id}.xml")
                Path(junit).unlink(missing_ok=True)
                argv = repo_config.argv
                if repo_config.command == cfg.DEFAULT_COMMAND:
                    argv = argv + [f"--junitxml={junit}"]
                write(f"$ {' '.join(argv)}\n".encode())
                env = {**os.environ, **repo_config.env, "CI": "true", "TUICI_COMMIT": a.commit,
                       "TUICI_BRANCH": a.branch, "TUICI_JOB_ID": str(a.job_id),
                       "TUICI_ATTEMPT": str(a.attempt), "TUICI_JUNIT_XML": junit}
                sandbox = self._sandbox_for(a, checkout)
                if sandbox is None:
                    write(f"tuici: no sandbox: {self.unsandboxed_because}\n".encode())
                started = time.monotonic()
                exit_code, timed_out = await self._run_command(job, argv, checkout, env, repo_config.timeout, write,
                                                               sandbox)
                counts = await asyncio.to_thread(junit_counts, [junit])
                if timed_out:
                    write(f"\ntuici: timed out after {repo_config.timeout:g} s; killed\n".encode())
            except cfg.ConfigError as exc:
                error = f"bad config: {exc}"
            except JobError as exc:
                error = str(exc)
            except asyncio.CancelledError:
                if not job.cancelled:
                    raise
            except OSError as exc:
                error = f"cannot run the test command: {exc}"
            except subprocess.SubprocessError as exc:  # raised in the child before exec: the sandbox
                error = f"cannot start the test command in its sandbox: {exc}"
            if error:
                write(f"tuici: {error}\n".encode())
            elif job.cancelled:
                write(b"\ntuici: cancelled\n")
            duration = time.monotonic() - started
        passed, failed, skipped = counts if counts else (None, None, None)
        job.result = p.JobResult(job_id=a.job_id, attempt=a.attempt, exit_code=exit_code, duration_s=duration,
                                 log_size=job.size, passed=passed, failed=failed, skipped=skipped,
                                 error=error, cancelled=job.cancelled, timed_out=timed_out)
        job.ended.set()
        job.changed.set()
        await asyncio.to_thread(self.workspace.release)  # once the result is on its way

    async def _run_command(self, job, argv, cwd, env, timeout, write, sandbox) -> tuple[int | None, bool]:
        if job.cancelled:
            return None, False

        def child_setup() -> None:
            die_with_parent()
            if sandbox is not None:
                sandbox.enter(cwd)

        job.spawning = True
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=child_setup,
            )
        finally:
            job.spawning = False
        job.pgid = proc.pid  # a cancel that came during the spawn has set job.stop: the wait below ends at once
        timed_out = False

        async def pump() -> None:
            while data := await proc.stdout.read(p.OUTPUT_CHUNK):
                write(data)

        reader = asyncio.ensure_future(pump())
        exited = asyncio.ensure_future(proc.wait())
        stop = asyncio.ensure_future(job.stop.wait())
        try:
            await asyncio.wait([exited, stop], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                # Timed out or cancelled: SIGTERM first; whatever ignores it gets SIGKILL below.
                timed_out = not job.cancelled
                kill_group(proc.pid, signal.SIGTERM)
                await asyncio.wait([exited], timeout=KILL_GRACE)
        finally:
            stop.cancel()
            # Nothing the job started outlives it, whether it ended, timed out or was cancelled:
            # not its process group, nor what left the group (we are a subreaper, so those are ours).
            kill_group(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
            await asyncio.to_thread(kill_all_descendants)
            job.pgid = None
            try:
                await asyncio.wait_for(reader, 2.0)
            except asyncio.TimeoutError:
                reader.cancel()
        return proc.returncode, timed_out


def _read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def runners_base() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return (Path(base) / "tuici" / "runners").resolve()


def default_workdir(name: str) -> Path:
    return runners_base() / name


async def run_runner(endpoint: p.Endpoint, name: str, workdir: Path, hide: tuple[Path, ...] = (),
                     sandbox: str = "auto") -> None:
    runner = Runner(endpoint, name, workdir, hide, sandbox)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runner.stopping.set)
    await runner.run()


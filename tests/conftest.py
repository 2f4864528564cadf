"""Fixtures that build real git repositories and run real tuici processes on 127.0.0.1.

Every process a test starts is stopped by pid in the fixture's ``finally``; the test
session is a child subreaper, so even grandchildren orphaned by a SIGKILL are found
(by the TUICI_SUPERVISOR mark in their environment) and killed.

What the bench does the same way comes from ``bench.shared`` (polling, git, a repository's set-up, waiting
for a process, peak memory); the bench's own ``Cluster`` and ``Repo`` differ on purpose (see
``bench.harness``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bench import shared
from bench.shared import git, wait_for  # noqa: F401 (tests import them from here)
from bench.shared import wait_or_kill as _wait_or_kill
from tuici import wire as p
from tuici.statedir import StateDir
from tuici.supervisor import MARK, become_subreaper, kill_descendants
from tuici.wire import Control

become_subreaper()


@pytest.fixture
def outside(tmp_path):
    """A directory a test command can read in its sandbox, for gates it waits on: the sandbox gives every job
    a /tmp of its own, so the test's tmp_path is out of its sight."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="tuici-test-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Runners' work dirs and job environments in this session's temp dir, not the user's cache."""
    os.environ["TUICI_CACHE_DIR"] = str(tmp_path_factory.mktemp("tuici-cache"))
    yield


class GitRepo:
    """A real repository in a temp dir, with helpers to commit and branch."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        shared.init_repo(path, "Dev", "dev@example.com")
        self._n = 0

    def git(self, *args: str) -> str:
        return git(self.path, *args)

    def commit(self, message: str | None = None, files: dict[str, str] | None = None, config: str | None = None) -> str:
        self._n += 1
        files = dict(files or {})
        if config is not None:
            files["tuici.toml"] = config
        if not files:
            files[f"file{self._n}.txt"] = f"change {self._n}\n"
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message or f"commit {self._n}")
        return self.head()

    def head(self, ref: str = "HEAD") -> str:
        return self.git("rev-parse", ref)

    @property
    def state(self) -> StateDir:
        return StateDir(self.path / ".git" / "tuici")


def toml_command(command: str, timeout: float = 30) -> str:
    return f"command = {command!r}\ntimeout = {timeout}\n"


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    r = GitRepo(tmp_path / "repo")
    r.commit("initial", config=toml_command("echo ok"))
    return r


def make_certs(d: Path, servers: dict[str, list[str]]) -> Path:
    """In ``d``: a CA (``ca.pem``), a stranger CA, and for each name in ``servers`` a certificate the CA signed
    for those IP addresses (``NAME.pem``, ``NAME.key``); ``d``. Skips where there is no openssl command."""
    if not shutil.which("openssl"):
        pytest.skip("TLS tests need the openssl command to make certificates")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    for ca in ("ca", "stranger"):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-subj", f"/CN=tuici test {ca}")
    for name, ips in servers.items():
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN=tuici dispatcher {name}")
        sans = ",".join(f"IP:{ip}" for ip in ips)
        (d / f"{name}.ext").write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"
                                       "extendedKeyUsage=serverAuth\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext")
    return d


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env[MARK] = str(os.getpid())
    env.pop("TUICI_TOKEN", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tcp_address(state: StateDir) -> str | None:
    """The TCP address the dispatcher of ``state`` serves on besides its Unix socket, if any."""
    return next((a for a in state.addresses() if not a.startswith("unix:")), None)


class Cluster:
    """tuici processes for one repository, each started and stopped by pid."""

    def __init__(self, repo: GitRepo, tmp: Path, heartbeat_timeout: float = 2.0, max_attempts: int = 3):
        self.repo = repo
        self.tmp = tmp
        self.state = repo.state
        self.procs: dict[str, subprocess.Popen] = {}
        self.heartbeat_timeout = heartbeat_timeout
        self.max_attempts = max_attempts
        self.address = ""

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "tuici", *args], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, env={**_env(), **(env or {})}, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def start_dispatcher(self) -> str:
        """The dispatcher on its Unix socket (which control requests use) and on TCP, which the components
        started here and raw-socket tests use (a restart keeps the port)."""
        self.state.address_file.unlink(missing_ok=True)
        listen = self.address or "127.0.0.1:0"
        self._spawn("dispatcher", "dispatcher", "--listen", listen, "--state", str(self.state.path),
                    "--repo", str(self.repo.path), "--heartbeat-timeout", str(self.heartbeat_timeout),
                    "--max-attempts", str(self.max_attempts))
        self.address = wait_for(lambda: tcp_address(self.state), 15, message="the dispatcher's address")
        return self.address

    def start_observer(self) -> subprocess.Popen:
        return self._spawn("observer", "observer", str(self.repo.path), "--dispatcher", self.address,
                           "--state", str(self.state.path))

    def start_runner(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return self._spawn(name, "runner", "--dispatcher", self.address, "--state", str(self.state.path),
                           "--name", name, "--workdir", str(self.tmp / "work" / name), *args, env=env)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(10)

    def stop(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None and name != "dispatcher":
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for name, proc in list(self.procs.items()):
            if name != "dispatcher":
                _wait_or_kill(proc)
        if "dispatcher" in self.procs:
            self.procs["dispatcher"].terminate()
            _wait_or_kill(self.procs["dispatcher"])
        kill_descendants()

    # -------------------------------------------------------------- queries

    def control(self, fn):
        async def go():
            control = Control.for_state(self.state)
            try:
                return await fn(control)
            finally:
                await control.close()
        return asyncio.run(go())

    def status(self) -> p.StatusReply:
        return self.control(lambda c: c.status())

    def jobs(self) -> list[p.JobInfo]:
        return self.status().jobs

    def job_for(self, sha: str) -> p.JobInfo | None:
        jobs = [j for j in self.jobs() if j.commit == sha]
        return jobs[-1] if jobs else None

    def wait_job(self, sha: str, states=p.FINAL_STATES, timeout: float = 30.0) -> p.JobInfo:
        def done():
            job = self.job_for(sha)
            return job if job is not None and job.state in states else None
        return wait_for(done, timeout, interval=0.1, message=f"a job for {sha[:10]} in {sorted(states)}")

    def log_of(self, job_id: int) -> str:
        """The job's stored output ('' until its first byte arrives)."""
        try:
            return self.state.job_log(job_id).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def component_log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def cluster(repo: GitRepo, tmp_path: Path):
    c = Cluster(repo, tmp_path)
    try:
        c.start_dispatcher()
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path):
    """Clusters for repositories a test makes itself; each stopped at the end."""
    made: list[Cluster] = []

    def make(repo: GitRepo, **kwargs) -> Cluster:
        c = Cluster(repo, tmp_path / f"cluster{len(made)}", **kwargs)
        c.tmp.mkdir()
        made.append(c)
        c.start_dispatcher()
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


def cmdline(proc: psutil.Process) -> list[str]:
    """The process's command line; empty once it has exited (listing and asking always race with its exit)."""
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def tuici(*args: str, cwd, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """A `tuici` command, run as a user runs it (with ``env`` added to the environment)."""
    return subprocess.run([sys.executable, "-m", "tuici", *args], cwd=cwd, capture_output=True, text=True,
                          env={**_env(), **env}, timeout=60, check=check)


@pytest.fixture
def serve_factory(tmp_path: Path):
    """`tuici serve --json` on a repository, with more arguments (and variables added to its environment); each
    stopped with SIGTERM at the end (and whatever it left behind killed)."""
    started: list[subprocess.Popen] = []

    def start(repo: GitRepo, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        out_path = tmp_path / f"serve{len(started)}.out"
        with open(out_path, "wb") as out, open(out_path.with_suffix(".err"), "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "tuici", "serve", str(repo.path), "--json", *args],
                                    stdout=out, stderr=err, env={**_env(), **(env or {})}, start_new_session=True)
        proc.out_path = out_path
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
                _wait_or_kill(proc, 20)
        kill_descendants()


def events(serve: subprocess.Popen) -> list[dict]:
    """What a `tuici serve --json` has printed so far."""
    lines = serve.out_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def tuici_processes() -> list[psutil.Process]:
    """Live processes this test session started, directly or through a supervisor it started.

    Each supervisor marks what it starts with its own pid, so the marks form a tree rooted here.
    """
    marks: dict[int, tuple[str, psutil.Process]] = {}
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
                mark = proc.environ().get(MARK)
                if mark:
                    marks[proc.pid] = (mark, proc)
        except psutil.Error:
            pass  # gone meanwhile
    ours = {str(os.getpid())}
    found: dict[int, psutil.Process] = {}
    grew = True
    while grew:
        grew = False
        for pid, (mark, proc) in marks.items():
            if mark in ours and pid not in found:
                found[pid] = proc  # the listing's own: making one anew races with the process's exit
                ours.add(str(pid))
                grew = True
    return list(found.values())


class PeakRss(shared.PeakRss):
    """The highest resident memory of some processes (``peak[pid]``), sampled every 50 ms in a thread for as
    long as the block runs."""

    def __init__(self, *pids: int, interval: float = 0.05):
        super().__init__({pid: pid for pid in pids}, interval)


def job_processes(sha: str) -> list[psutil.Process]:
    """Live processes started for the job that tests ``sha`` (they carry TUICI_COMMIT in their environment)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("TUICI_COMMIT") == sha:
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A private PostgreSQL server for this session (bench.pgserver), stopped by its pid at the end. Where no
    server can be started here, the tests that need it skip, saying why."""
    from bench import pgserver

    try:
        server = pgserver.start()
    except pgserver.PgUnavailable as exc:
        pytest.skip(f"no PostgreSQL server can be started here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server, request):
    """A fresh database on the session's server, for one test."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    return pg_server.create_database(name)

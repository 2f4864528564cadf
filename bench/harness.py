"""What every benchmark row stands on: processes started and stopped by pid, real git
repositories in temp dirs, a control connection to the dispatcher, statistics and the
description of the machine.

Every process the bench starts gets its own session (process group) and the
``TUICI_SUPERVISOR`` mark in its environment, and is stopped by pid in a ``finally``.
The bench process makes itself a child subreaper, so anything orphaned below it is
re-parented to it and swept at the end.

What the test suite does the same way is in ``bench.shared``, which ``tests/conftest.py`` imports too
(polling, git, a repository's set-up, waiting for a process, peak memory). What stays here
differs on purpose: see ``Procs``, ``Repo``, ``Cluster`` and ``child_env``.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil

from . import shared
from .shared import killpg as _killpg

try:  # the mark tuici's supervisor and the test fixtures look for
    from tuici.supervisor import MARK
except Exception:  # pragma: no cover - tuici being edited
    MARK = "TUICI_SUPERVISOR"

PY = sys.executable
_PR_SET_CHILD_SUBREAPER = 36


class BenchError(Exception):
    """A row could not be measured (a process died, a wait ran out of time)."""


class RowSkipped(Exception):
    """A row cannot run on this machine (a tool it compares tuici with cannot be installed): reported as not
    measured, with the reason, rather than as an error."""


def become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        pass


def tuici_root() -> str:
    """The directory holding the `tuici` package the bench imported: every child imports that one too,
    whatever its working directory (so a patched copy of the work tree benchmarks its own tuici)."""
    import tuici

    return str(Path(tuici.__file__).resolve().parent.parent)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every process the bench starts. Apart from the tests' on purpose (they set
    PYTHONUNBUFFERED, to read logs as they are written): the bench measures tuici as a user runs it."""
    # PYTHONDONTWRITEBYTECODE (set on some build machines) would make every process recompile tuici's source:
    # measure tuici as installed, with its bytecode cached, as on a user's machine. And no PYTHONUNBUFFERED:
    # a runner passes its environment on to the test command, which would then write unbuffered, unlike the
    # direct run it is compared with (tuici's processes flush their logs and event lines themselves).
    env = {k: v for k, v in os.environ.items()
           if k not in ("TUICI_TOKEN", "TUICI_DISPATCHER", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")}
    env[MARK] = str(os.getpid())
    env.update(extra or {})
    return env


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until truthy, at most ``timeout`` seconds (``shared.wait_for``, failing the row)."""
    return shared.wait_for(predicate, timeout, interval, what, error=BenchError)


# ---------------------------------------------------------------------- statistics


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    xs = sorted(values)
    if not xs:
        return math.nan
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(values: Iterable[float]) -> dict[str, float]:
    xs = [float(v) for v in values]
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50": percentile(xs, 50),
        "p99": percentile(xs, 99),
        "min": min(xs),
        "max": max(xs),
        "mean": sum(xs) / len(xs),
    }


def timed_run(argv: list[str], **kwargs) -> float:
    """Wall seconds of one command, which must succeed."""
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, **kwargs)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- processes


class Procs:
    """Every process the bench starts, each in its own session, stopped by pid.

    Apart from the tests' per-cluster process table on purpose: one registry for the whole run, so that the
    profiler, the pty apps and ``tuici serve`` are stopped like the components, groups are signalled
    together and waited for against one deadline, and ``__main__`` stops whatever a failed row left."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, argv: list[str], cwd: Path | None = None, stdout=None,
              env: dict[str, str] | None = None, tty: int | None = None) -> subprocess.Popen:
        """Start ``argv``; with ``tty`` (a pty's slave end) as its stdin, stdout and stderr, like a terminal app."""
        if name in self.procs and self.procs[name].poll() is None:
            raise BenchError(f"process {name} is already running")
        log = open(self.logdir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL if tty is None else tty,
                                    stdout=stdout or (log if tty is None else tty), stderr=log if tty is None else tty,
                                    env=child_env(env), start_new_session=True)
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 8) -> str:
        try:
            text = (self.logdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def check_alive(self, *names: str) -> None:
        for name in names:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")

    def stop(self, names: Iterable[str], sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """Signal each process group, then wait; SIGKILL the groups that outlive ``grace``."""
        names = [n for n in names if n in self.procs]
        for name in names:
            proc = self.procs[name]
            if proc.poll() is None:
                _killpg(proc.pid, signal.SIGCONT)
                _killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        for name in names:
            proc = self.procs.pop(name)
            shared.wait_or_kill(proc, max(0.1, deadline - time.monotonic()))
            _killpg(proc.pid, signal.SIGKILL)  # anything left in its group

    def stop_all(self) -> None:
        self.stop([n for n in self.procs if not n.endswith("dispatcher")])
        self.stop(list(self.procs))
        sweep_descendants()


def sweep_descendants() -> None:
    """SIGKILL every process below the bench (orphans are re-parented to us) and reap them."""
    try:
        procs = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    for proc in procs:
        try:
            if proc.ppid() == os.getpid():
                proc.wait(2)
        except (psutil.Error, ChildProcessError):
            pass


# ---------------------------------------------------------------------- git


def git(cwd: Path, *args: str, input: bytes | None = None) -> str:
    """``shared.git``, failing the row."""
    return shared.git(cwd, *args, input=input, error=BenchError)


FILE_BODY = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(40))  # ~2 KB


class Repo:
    """A real repository in a temp dir: ``files`` tracked files plus a ``tuici.toml``.

    Apart from the tests' ``GitRepo`` on purpose (both start with ``shared.init_repo``): its commits are
    what a row times (one tracked file changed, the wall time `git commit` returned), and it makes
    thousands of commits in one `git fast-import`."""

    def __init__(self, path: Path, config: str, files: int = 10, extra: dict[str, str] | None = None):
        self.path = path
        path.mkdir(parents=True)
        shared.init_repo(path, "Bench", "bench@example.com", error=BenchError)
        self.files = []
        for i in range(files):
            rel = f"src/d{i // 50:03d}/f{i:05d}.txt"
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(FILE_BODY)
            self.files.append(rel)
        for rel, text in (extra or {}).items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        (path / "tuici.toml").write_text(config)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "initial")
        self._n = 0

    @property
    def state_path(self) -> Path:
        return self.path / ".git" / "tuici"

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def commit(self, files: dict[str, str] | None = None) -> tuple[str, float]:
        """Change one tracked file (or write ``files``) and commit; (sha, wall time `git commit` returned)."""
        self._n += 1
        if files:
            for rel, text in files.items():
                (self.path / rel).write_text(text)
            git(self.path, "add", *files)
        else:
            rel = self.files[self._n % len(self.files)] if self.files else "bench.txt"
            with open(self.path / rel, "a") as fh:
                fh.write(f"change {self._n} {time.time()}\n")
            if not self.files:
                git(self.path, "add", rel)
        res = subprocess.run(["git", "commit", "-q", "-a", "-m", f"change {self._n}"], cwd=self.path,
                             stdin=subprocess.DEVNULL, capture_output=True)
        returned = time.time()
        if res.returncode != 0:
            raise BenchError(f"git commit failed: {res.stderr.decode(errors='replace').strip()}")
        return self.head(), returned

    def fast_import(self, n: int, path: str = "bench/counter.txt",
                    extra: Callable[[int], dict[str, str]] | None = None) -> tuple[list[str], float]:
        """``n`` commits on main in one `git fast-import` (one ref update), commit ``i`` also writing the files
        ``extra(i)``; (shas, time it returned)."""
        parent = self.head()
        parts = []
        for i in range(n):
            msg = f"bulk {i}\n".encode()
            files = {path: f"{i}\n", **(extra(i) if extra else {})}
            parts.append(b"commit refs/heads/main\nmark :%d\ncommitter Bench <bench@example.com> now\n" % (i + 1))
            parts.append(b"data %d\n%s" % (len(msg), msg))
            if i == 0:
                parts.append(b"from %s\n" % parent.encode())
            for name, text in files.items():
                body = text.encode()
                parts.append(b"M 100644 inline %s\ndata %d\n%s\n" % (name.encode(), len(body), body))
        stream = b"".join(parts)
        marks = self.path / ".git" / "bench-marks"
        res = subprocess.run(["git", "fast-import", "--quiet", "--date-format=now", f"--export-marks={marks}"],
                             cwd=self.path, input=stream, capture_output=True)
        returned = time.time()
        if res.returncode != 0:
            raise BenchError(f"git fast-import failed: {res.stderr.decode(errors='replace').strip()}")
        shas = {}
        for line in marks.read_text().splitlines():
            mark, sha = line.split()
            shas[int(mark[1:])] = sha
        marks.unlink()
        return [shas[i + 1] for i in range(n)], returned

    def sync_worktree(self) -> None:
        """Bring index and work tree to HEAD after a fast-import (outside any measurement)."""
        git(self.path, "reset", "-q", "--hard")


# ---------------------------------------------------------------------- tuici processes


class Ctl:
    """A control connection to a dispatcher, usable from synchronous code."""

    def __init__(self, state_path: Path):
        from tuici.statedir import StateDir
        from tuici.wire import Control

        self.loop = asyncio.new_event_loop()
        self.control = Control.for_state(StateDir(state_path))

    def status(self, limit: int = 0):
        return self.loop.run_until_complete(asyncio.wait_for(self.control.status(limit), 30))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.control.close())
        except Exception:
            pass
        self.loop.close()


class Cluster:
    """Dispatcher, observer and runners for one repository, as `python -m tuici ...` processes.

    Apart from the tests' ``Cluster`` on purpose: its components are processes of the run's ``Procs`` (the
    bench's own children, named by row, profiled by py-spy, stopped with the rest when a row fails), the
    dispatcher listens on its Unix socket only, as `tuici serve` runs it (the tests' also serves TCP and
    keeps its port across restarts), with tuici's defaults (the tests shorten the heartbeat timeout and set
    the attempts), and one control connection is kept open for the many status requests a row makes."""

    def __init__(self, procs: Procs, repo: Repo, workdir: Path, tag: str, heartbeat_timeout: float | None = None,
                 dispatcher_args: tuple[str, ...] = ()):
        self.dispatcher_args = dispatcher_args  # e.g. --store: a dispatcher of a group sharing PostgreSQL
        self.procs = procs
        self.repo = repo
        self.workdir = workdir
        self.tag = tag
        self.names: list[str] = []
        self.address = ""
        self.heartbeat_timeout = heartbeat_timeout
        self._ctl: Ctl | None = None

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        full = f"{self.tag}-{name}"
        self.names.append(full)
        return self.procs.spawn(full, [PY, "-m", "tuici", *args], env={"XDG_CACHE_HOME": str(self.workdir / "cache")})

    def pid(self, name: str) -> int:
        return self.procs.procs[f"{self.tag}-{name}"].pid

    def start_dispatcher(self) -> str:
        """The dispatcher as `tuici serve` runs it: the components connect to its Unix socket."""
        from tuici.statedir import StateDir

        state = StateDir(self.repo.state_path)
        state.address_file.unlink(missing_ok=True)
        extra = ["--heartbeat-timeout", str(self.heartbeat_timeout)] if self.heartbeat_timeout else []
        self._spawn("dispatcher", "dispatcher", "--state", str(state.path), "--repo", str(self.repo.path), *extra,
                    *self.dispatcher_args)

        def address():
            self.procs.check_alive(f"{self.tag}-dispatcher")
            return state.address()

        self.address = wait_for(address, 30, 0.01, "the dispatcher's address")
        return self.address

    def start_observer(self) -> None:
        self._spawn("observer", "observer", str(self.repo.path), "--dispatcher", self.address,
                    "--state", str(self.repo.state_path))

    def start_runner(self, name: str, *args: str) -> None:
        self._spawn(name, "runner", "--dispatcher", self.address, "--state", str(self.repo.state_path),
                    "--name", name, "--workdir", str(self.workdir / "runners" / name), *args)

    @property
    def ctl(self) -> Ctl:
        if self._ctl is None:
            self._ctl = Ctl(self.repo.state_path)
        return self._ctl

    def status(self, limit: int = 0):
        return self.ctl.status(limit)

    def check_alive(self) -> None:
        self.procs.check_alive(*self.names)

    def wait_runners(self, n: int, timeout: float = 60.0) -> float:
        """Wait until ``n`` runners are registered and not lost; the time it happened."""
        def ready():
            self.check_alive()
            return sum(1 for r in self.status().runners if r.state != "lost") >= n
        wait_for(ready, timeout, 0.05, f"{n} registered runners")
        return time.time()

    def wait_jobs(self, shas: list[str], timeout: float, interval: float = 0.1) -> dict[str, Any]:
        """Wait until every commit in ``shas`` has a job in a final state; sha -> newest job."""
        from tuici import wire as p

        want = set(shas)
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.status(limit=len(want) + 100).jobs
            found = {}
            for j in jobs:
                if j.commit in want:
                    found[j.commit] = j
            if len(found) == len(want) and all(j.state in p.FINAL_STATES for j in found.values()):
                return found
            if time.monotonic() > deadline:
                done = sum(1 for j in found.values() if j.state in p.FINAL_STATES)
                raise BenchError(f"timed out after {timeout:.0f} s: {done}/{len(want)} jobs finished")
            self.check_alive()
            time.sleep(interval)

    def stop(self) -> None:
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        self.procs.stop([n for n in self.names if not n.endswith("dispatcher")])
        self.procs.stop([n for n in self.names if n.endswith("dispatcher")])


# ---------------------------------------------------------------------- sampling


class RssSampler(shared.PeakRss):
    """Peak resident set size of some processes (``{name: pid}``), sampled on a thread every 20 ms."""

    def __init__(self, pids: dict[str, int], interval: float = 0.02):
        super().__init__(pids, interval)


def cpu_seconds(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """User+system CPU seconds of some processes and everything below them, as `top` would count it: each live
    process's own times and those of its children it has reaped (which include their own reaped children)."""
    procs: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs[root.pid] = root
            procs.update((p.pid, p) for p in root.children(recursive=True))
        except psutil.Error:
            pass
    total = 0.0
    for proc in procs.values():
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def tree_wakeups(roots: Iterable[int]) -> dict[int, int]:
    """How often each process of the trees below ``roots`` (each of its threads) has been put on a CPU, by pid:
    /proc/PID/task/TID/schedstat's third field. Finer than CPU time, whose unit is a 10 ms clock tick."""
    counts: dict[int, int] = {}
    for root in roots:
        try:
            procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            try:
                tasks = os.listdir(f"/proc/{proc.pid}/task")
            except OSError:
                continue
            for tid in tasks:
                try:
                    with open(f"/proc/{proc.pid}/task/{tid}/schedstat") as fh:
                        counts[proc.pid] = counts.get(proc.pid, 0) + int(fh.read().split()[2])
                except (OSError, IndexError, ValueError):
                    pass
    return counts


def make_wheel(folder: Path, name: str, version: str, code: str) -> Path:
    """A pure-Python wheel of one module, written by hand: what an index would serve."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    files = {
        f"{name}.py": code.encode(),
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n",
    }
    record = []
    for arcname, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arcname},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, data in files.items():
            zf.writestr(arcname, data)
    return path


def wait_quiet(busy_pct: float = 10.0, window: float = 0.5, timeout: float = 30.0) -> float:
    """Wait until the machine's CPU is under ``busy_pct`` over ``window`` (at most ``timeout``); seconds waited."""
    t0 = time.monotonic()
    psutil.cpu_percent()
    while time.monotonic() - t0 < timeout:
        time.sleep(window)
        if psutil.cpu_percent() < busy_pct:
            break
    return time.monotonic() - t0


# ---------------------------------------------------------------------- profiling


class Profiler:
    """py-spy recordings of tuici processes while a row's measured phase runs (``--profile DIR``)."""

    def __init__(self, procs: Procs, outdir: Path | None, fmt: str = "flamegraph", idle: bool = False,
                 rate: int = 250):
        self.procs = procs
        self.outdir = outdir
        self.fmt = fmt
        self.idle = idle
        self.rate = rate
        self.exe = _find_pyspy() if outdir else None
        self.active: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.outdir is not None and self.exe is not None

    def start(self, row: str, pids: dict[str, int]) -> None:
        if not self.enabled:
            return
        self.outdir.mkdir(parents=True, exist_ok=True)
        ext = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}.get(self.fmt, "out")
        for name, pid in pids.items():
            tag = f"pyspy-{row}-{name}"
            argv = [self.exe, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", self.fmt,
                    "--nonblocking", "-o", str(self.outdir / f"{row}-{name}.{ext}")]
            if self.idle:
                argv.append("--idle")
            self.procs.spawn(tag, argv)
            self.active.append(tag)
        time.sleep(0.3)  # let py-spy attach

    def stop(self) -> None:
        if self.active:
            self.procs.stop(self.active, sig=signal.SIGINT, grace=20)
            self.active = []


def _find_pyspy() -> str | None:
    here = Path(PY).parent / "py-spy"
    if here.exists():
        return str(here)
    from shutil import which

    return which("py-spy")


# ---------------------------------------------------------------------- the machine


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        gitv = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        gitv = "?"
    root = Path(tuici_root())
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tuici"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
        rev += " + uncommitted changes in tuici/" if dirty else ""
    except OSError:
        rev = "?"
    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical, {psutil.cpu_count(logical=False)} physical",
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "git": gitv.replace("git version ", ""),
        "os": platform.platform(),
        "tuici": f"{rev or '?'} ({root})",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


class LoadMeter:
    """CPU the rest of the machine used meanwhile: all busy CPU time minus the bench's own process tree
    (itself and every child it has waited for, whose times include their own waited-for descendants)."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.sys0, self.own0 = self._sys(), self._own()

    @staticmethod
    def _sys() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    @staticmethod
    def _own() -> float:
        t = psutil.Process().cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def text(self) -> str:
        wall = max(1e-9, time.monotonic() - self.t0)
        cores = os.cpu_count() or 1
        total = (self._sys() - self.sys0) / wall / cores * 100
        own = (self._own() - self.own0) / wall / cores * 100
        return (f"machine CPU busy {total:.0f}% (of {cores} cores): the bench and tuici {min(own, total):.0f}%, "
                f"other processes {max(0.0, total - own):.0f}%")


def load_text() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


@dataclass
class Figure:
    """One line of the results table."""

    row: str  # the --only name
    figure: str  # what is measured
    unit: str
    value: float | None  # the headline number (a median unless the figure says otherwise)
    target: str  # the target as text
    ok: bool | None  # target met; None when not measured
    spread: str = ""
    limit: str = ""  # the physical limit measured in the same run
    stats: dict[str, float] = field(default_factory=dict)
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # the row could not be measured
    tuici: float | None = None  # for another CI's figure (value): tuici's on the same workload, in the same run

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        if self.value is None:
            return "not measured"
        return {True: "met", False: "MISSED", None: "-"}[self.ok]

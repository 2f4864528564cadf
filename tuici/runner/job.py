"""One job, from its commit to its verdict: checkout, config, environment, sandbox, command, test cases and retries.

Everything here runs off the runner's event loop (git, the disk, locks: in threads) except the waiting, so the
runner keeps heartbeating and streaming output whatever a job does; and any exception while handling a job
ends that job in ``error`` with its reason, never the runner.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import config as cfg
from .. import testcases
from .. import wire as p
from ..errors import JobError
from ..lazy import LazyModule
from ..procs import kill_all_descendants, kill_group
from . import spawn
from .environments import EnvCache, EnvSpec, Lease, matching_files
from .junit import JunitReport, read_junit
from .sandbox import ROOT, Binding, Sandbox
from .workspace import Workspace

if TYPE_CHECKING:
    import psutil
else:
    psutil = LazyModule("psutil")

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL, for a job that timed out or was cancelled
DRAIN = 1.0  # seconds the output of what a command left running may still be read after it exited
# Inherited settings that would point a job with its own environment at the developer's Python instead.
SHELL_PYTHON = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONSTARTUP", "PYTHONUSERBASE")

TREE_LIMIT = 64 << 20  # bytes of a commit's top tree read to find its config (~a million entries)

# A retry (``retry_failed``) names each failing test on its command line: past this many, a job's failures are not
# flakes, and the retry would be as long as the run.
MAX_RETRIED = 1000

# Sockets of the user's session that would let the code under test act as the user outside the sandbox.
AGENT_SOCKETS = ("SSH_AUTH_SOCK", "DBUS_SESSION_BUS_ADDRESS", "GPG_AGENT_INFO", "DOCKER_HOST", "XDG_RUNTIME_DIR")


@dataclass(frozen=True)
class RunnerPlaces:
    """What a runner knows that does not change from one job to the next."""

    name: str
    workdir: Path
    hide: tuple[Path, ...]  # what the code under test must not see (state dir, tuici's cache)
    envs: EnvCache
    bwrap: str | None  # None: no sandbox
    unsandboxed_because: str | None
    uv: str | None
    landlock: bool = False  # the sandbox also scopes abstract Unix sockets and signals to the job
    setpriv: str | None = None  # sets the parent-death signal of an unsandboxed command (else a fork does: spawn.start)

    @property
    def shims(self) -> Path:
        return self.workdir / "shims"


@dataclass
class Outcome:
    exit_code: int | None = None
    timed_out: bool = False
    error: str = ""
    junit: JunitReport | None = None  # its test cases and counts, after any retries
    env: str = ""
    env_reused: bool = False


@dataclass
class Control:
    """How the connection steers a running job: cancel it, and know its process group."""

    cancelled: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    pgid: int | None = None
    spawning: bool = False


@dataclass(frozen=True)
class View:
    """Where the job's files are, as its commands see them (inside the sandbox, or the real paths)."""

    source: str
    env: str
    junit: str
    uv: str | None
    shims: str
    packages: str


class Job:
    def __init__(self, assign: p.Assign, places: RunnerPlaces, workspace: Workspace, control: Control,
                 write: Callable[[bytes], None]):
        self.a = assign
        self.places = places
        self.workspace = workspace
        self.control = control
        self.write = write
        self.deadline = 0.0
        self.spec: EnvSpec | None = None
        self.keeps_pytest_cache = False
        self.lease: Lease | None = None
        self.addopts = ""  # pytest's options as the job's environment sets them, before tuici's --junitxml
        # The test ids in the JUnit XML, resolved against the commit's files (listed once, when first needed).
        self.node_ids = testcases.NodeIds(
            lambda: [path for _mode, _obj, path in self.workspace.tracked(self.a.commit)])

    def say(self, text: str) -> None:
        self.write(f"tuici: {text}\n".encode())

    async def run(self) -> Outcome:
        a, out = self.a, Outcome()
        self.say(f"{self.places.name} testing {a.commit[:12]} ({a.branch}), attempt {a.attempt}")
        try:
            await self._run(out)
        except cfg.ConfigError as exc:
            out.error = f"bad config: {exc}"
        except JobError as exc:
            out.error = str(exc)
        except asyncio.CancelledError:
            if not self.control.cancelled:
                raise
        except Exception as exc:  # noqa: BLE001 - whatever it is, it ends this job, not the runner
            out.error = f"tuici could not run the job: {type(exc).__name__}: {exc}"
        if out.error:
            self.say(out.error)
        elif self.control.cancelled:
            self.write(b"\ntuici: cancelled\n")
        return out

    async def _run(self, out: Outcome) -> None:
        a = self.a
        if a.repo_url and os.path.isdir(a.repo_url) and self.places.workdir.is_relative_to(Path(a.repo_url).resolve()):
            raise JobError(f"the runner's work dir {self.places.workdir} is inside the repository; "
                           "give the runner a --workdir elsewhere")
        config, top = await asyncio.to_thread(self._config)
        self.keeps_pytest_cache = ".pytest_cache" not in top  # unless the commit tracks one
        self.deadline = time.monotonic() + config.timeout
        view = self._view(config)
        sandboxed = self.places.bwrap is not None
        # Where it can, the sandbox is set up while the commit is checked out, its command held until then.
        overlap = sandboxed and config.setup is None and self.workspace.is_clean(a.repo_url)
        checkout = self.workspace.checkout if overlap else await asyncio.to_thread(self._checkout)
        if not sandboxed:
            self.say(f"no sandbox: {self.places.unsandboxed_because}")
            if not config.network:
                self.say("network = false needs the sandbox: this job has the network")
        junit = self._junit_name()
        if config.setup is not None:
            tracked = await asyncio.to_thread(self.workspace.tracked, a.commit)
            self.spec = EnvSpec(repo=a.repo_url, branch=a.branch, python=config.python or _default_python(),
                                setup=config.setup_argv or [], inputs=matching_files(tracked, config.cache_key),
                                place=view.env or f"unsandboxed {checkout}", source=view.source)
            if not sandboxed:  # the environment and caches at their own paths
                envs = self.places.envs
                view = replace(view, env=str(envs.env_dir(self.spec)),
                               packages=str(await asyncio.to_thread(envs.package_dir, self.spec)))
        if not sandboxed and self.keeps_pytest_cache:
            await asyncio.to_thread(_link, checkout / ".pytest_cache", self._pytest_cache())
        env = self._environ(config, view, f"{view.junit}/{junit}")
        exposed = self._exposed(env)
        if exposed:
            self.say("visible read-only, as an interpreter on PATH lives where the sandbox hides: "
                     + ", ".join(str(path) for path in exposed))
        if config.setup is not None:
            if not await self._environment(config, view, env, exposed, out):
                return
        argv = config.argv
        sections = config.setup is not None  # setup and tests, each with its duration; else the output alone
        if sections:
            self._section("tests")
        self.write(f"$ {' '.join(argv)}\n".encode())
        started = time.monotonic()
        sandbox = self._sandbox(config, view, exposed, setup=False) if sandboxed else None
        out.exit_code, out.timed_out = await self._command(argv, checkout, view.source, env, sandbox,
                                                           before=self._checkout if overlap else None)
        took = time.monotonic() - started
        if out.timed_out:
            self.write(f"\ntuici: timed out after {config.timeout:g} s; killed\n".encode())
        elif sections and not self.control.cancelled:
            self._section(f"tests ended in {took:.1f} s, exit code {out.exit_code}")
        out.junit = await asyncio.to_thread(read_junit, self.workspace.junit / junit, self.node_ids)
        if config.retry_failed and out.junit is not None and out.exit_code != 0 and not out.timed_out:
            await self._retry_failed(config, view, env, sandbox, out.junit, out)

    def _config(self) -> tuple[cfg.RepoConfig, set[str]]:
        """The commit's config, and the names at the top of its tree, read from git's objects: no checkout
        needed yet."""
        self.workspace.open_at(self.a.repo_url, self.a.commit)
        return read_config(self.workspace, self.a.commit)

    def _checkout(self) -> Path:
        return self.workspace.prepare(self.a.repo_url, self.a.commit, self.places.bwrap is None)

    # ------------------------------------------------------------------ retries

    def _junit_name(self, retry: int = 0) -> str:
        """The JUnit XML file of the run (0) or of retry ``retry``, in the job's JUnit dir."""
        return f"{self.a.job_id}.xml" if not retry else f"{self.a.job_id}-retry{retry}.xml"

    async def _retry_failed(self, config: cfg.RepoConfig, view: View, env: dict[str, str], sandbox: Sandbox | None,
                            junit: JunitReport, out: Outcome) -> None:
        """Run the failing tests again, by node id, up to ``retry_failed`` times, in the same sandbox and
        checkout: a test that passes this time is flaky. If none fails in the end, the job passes (and its log,
        its result and `tuici tests` list the flaky ones)."""
        code = out.exit_code
        for retry in range(1, config.retry_failed + 1):
            failing = testcases.to_retry(junit.cases)
            if not failing or self.control.cancelled:
                break
            if junit.truncated or not all(testcases.is_node_id(name) for name in failing):
                self.say("retry_failed: the failing tests are not all pytest node ids (path.py::test); not retried")
                break
            if len(failing) > MAX_RETRIED:
                self.say(f"retry_failed: {len(failing)} tests failed, more than the {MAX_RETRIED} a retry runs; "
                         "not retried")
                break
            self._section(f"retry {retry} of {config.retry_failed}: {len(failing)} failed "
                          f"test{'s' if len(failing) > 1 else ''}")
            name = self._junit_name(retry)
            retry_env = {**env, **_junit_env(self.addopts, f"{view.junit}/{name}")}
            argv = ["python", "-m", "pytest", *failing]
            self.write(f"$ {shlex.join(argv)}\n".encode())
            code, timed_out = await self._command(argv, self.workspace.checkout, view.source, retry_env, sandbox)
            if timed_out:
                out.timed_out = True
                self.write(f"\ntuici: timed out after {config.timeout:g} s; killed\n".encode())
                return
            retried = await asyncio.to_thread(read_junit, self.workspace.junit / name, self.node_ids)
            junit.cases = testcases.after_retry(junit.cases, retried.cases if retried is not None else [])
            still = len(testcases.to_retry(junit.cases))
            self._section(f"retry {retry}: {len(failing) - still} passed, {still} still failing, exit code {code}")
        if not testcases.to_retry(junit.cases) and code == 0:
            out.exit_code = 0
        flaky = [case.name for case in junit.cases if case.flaky]
        if flaky:
            shown = ", ".join(flaky[:p.MAX_LISTED_TESTS]) + (f" and {len(flaky) - p.MAX_LISTED_TESTS} more"
                                                              if len(flaky) > p.MAX_LISTED_TESTS else "")
            self.say(f"flaky: {len(flaky)} test{'s' if len(flaky) > 1 else ''} failed, then passed on retry: {shown}")

    # ------------------------------------------------------------------ environment

    async def _environment(self, config: cfg.RepoConfig, view: View, env: dict[str, str],
                           exposed: list[Path], out: Outcome) -> bool:
        """Make or reuse the job's virtualenv; False if setup failed (the job then ends in error)."""
        spec = self.spec
        assert spec is not None
        envs = self.places.envs
        out.env = spec.key[:12]
        lease, ready = await asyncio.to_thread(envs.lease, spec)
        kept = False
        try:
            if ready:
                out.env_reused = True
                self._section(f"setup skipped: environment {out.env} reused")
            else:
                await asyncio.to_thread(envs.start, spec)
                packages = await asyncio.to_thread(envs.package_dir, spec)
                self._section(f"setup: environment {out.env}, new")
                started = time.monotonic()
                code = await self._setup(config, view, env, exposed, spec, packages)
                took = time.monotonic() - started
                if code != 0 or self.control.cancelled:
                    await asyncio.to_thread(envs.discard, spec)
                    if self.control.cancelled:
                        return False
                    out.exit_code = code
                    what = "timed out" if code is None else f"failed with exit code {code}"
                    self._section(f"setup {what} after {took:.1f} s")
                    raise JobError(f"setup {what}; the tests did not run")
                await asyncio.to_thread(envs.finish, spec)
                self._section(f"setup passed in {took:.1f} s")
                await asyncio.to_thread(lease.share)  # others may use it now, none may remove or remake it
                # The cache grew: bring it back under its limit, in the background (it walks the caches).
                threading.Thread(target=envs.evict_quietly, name="evict", daemon=True).start()
            self.lease, kept = lease, True
        finally:
            if not kept:
                lease.close()
        return True

    async def _setup(self, config: cfg.RepoConfig, view: View, env: dict[str, str], exposed: list[Path],
                     spec: EnvSpec, packages: Path) -> int | None:
        setup_env = {**env, "UV_CACHE_DIR": view.packages, "PIP_CACHE_DIR": f"{view.packages}/pip",
                     "UV_LINK_MODE": "copy", "UV_COMPILE_BYTECODE": "1", "UV_PYTHON_DOWNLOADS": "never",
                     "UV_NO_PROGRESS": "1", "PATH": f"{view.shims}:{env['PATH']}"}
        sandbox = self._sandbox(config, view, exposed, setup=True, packages=packages) if self.places.bwrap else None
        if view.uv is not None:
            _write_shims(self.places.shims, view.uv)
            make = [view.uv, "venv", "--quiet", "--python", spec.python, view.env]
        else:
            make = [spec.python, "-m", "venv", view.env]
        self.write(f"$ {' '.join(make)}\n".encode())
        code, timed_out = await self._command(make, self.workspace.checkout, view.source, setup_env, sandbox)
        if code != 0 or timed_out:
            return None if timed_out else code
        self.write(f"$ {' '.join(config.setup_argv or [])}\n".encode())
        code, timed_out = await self._command(config.setup_argv or [], self.workspace.checkout, view.source,
                                              setup_env, sandbox)
        return None if timed_out else code

    def release(self) -> None:
        """Let go of the environment, once the job's processes are gone."""
        if self.lease is not None:
            self.lease.close()
            self.lease = None

    # ------------------------------------------------------------------ places

    def _view(self, config: cfg.RepoConfig) -> View:
        places = self.places
        if places.bwrap is not None:
            return View(source=f"{ROOT}/{_source_name(self.a.repo_url)}", env=f"{ROOT}/env", junit=f"{ROOT}/junit",
                        uv=f"{ROOT}/bin/uv" if places.uv else None, shims=f"{ROOT}/shims", packages=f"{ROOT}/packages")
        return View(source=str(self.workspace.checkout), env="", junit=str(self.workspace.junit), uv=places.uv,
                    shims=str(places.shims), packages="")

    def _sandbox(self, config: cfg.RepoConfig, view: View, exposed: list[Path], setup: bool,
                 packages: Path | None = None) -> Sandbox:
        places, ws = self.places, self.workspace
        binds = [Binding(ws.checkout, view.source, writable=True),
                 Binding(ws.git_dir, f"{view.source}/.git")]
        objects = ws.repo_objects
        if objects is not None:
            binds.append(Binding(objects, f"{ROOT}/.repo-objects"))
        if self.keeps_pytest_cache:
            binds.append(Binding(self._pytest_cache(), f"{view.source}/.pytest_cache", writable=True))
        binds.append(Binding(ws.junit, view.junit, writable=True))
        if self.spec is not None:
            binds.append(Binding(places.envs.env_dir(self.spec), view.env, writable=setup))
        if setup:
            if packages is not None:
                binds.append(Binding(packages, view.packages, writable=True))
            if places.uv is not None and view.uv is not None:
                binds.append(Binding(Path(places.uv), view.uv))
                binds.append(Binding(places.shims, view.shims))
        binds += [Binding(path, str(path)) for path in exposed]
        return Sandbox(hide=places.hide + self.workspace.repo_dirs + _session_dirs(), binds=tuple(binds),
                       network=setup or config.network, fresh_tmp=ws.tmp, fresh_cache=(ws.cache, _user_cache()))

    def _exposed(self, env: dict[str, str]) -> list[Path]:
        """Interpreter environments on the job's PATH that the sandbox would hide or replace (in the repository,
        in /tmp, in the cache dir): bound back in, read-only, rather than silently another python found."""
        if self.places.bwrap is None:
            return []
        hidden = self.places.hide + self.workspace.repo_dirs + _session_dirs() + (Path("/tmp"), _user_cache())
        found: list[Path] = []
        for path in _entries_within(env.get("PATH", ""), hidden):
            root = path.parent if (path.parent / "pyvenv.cfg").is_file() else path
            if root.is_dir() and root not in found:
                found.append(root)
        return found

    def _pytest_cache(self) -> Path:
        """pytest's cache (for ``--lf``, ``--ff``), kept per runner and branch."""
        cache = self.places.workdir / "pytest-cache" / _branch_dir(self.a.branch)
        cache.mkdir(parents=True, exist_ok=True)
        return cache

    def _environ(self, config: cfg.RepoConfig, view: View, junit: str) -> dict[str, str]:
        a = self.a
        env = {k: v for k, v in os.environ.items() if k not in ("TUICI_TOKEN", "TUICI_CACHE_DIR")}
        if config.setup is not None:
            for name in SHELL_PYTHON:
                env.pop(name, None)
            own = {os.path.realpath(d) for d in (sys.prefix, os.environ.get("VIRTUAL_ENV", "")) if d}
            if sys.prefix == sys.base_prefix:
                own.discard(os.path.realpath(sys.prefix))
            path = [e for e in env.get("PATH", os.defpath).split(os.pathsep)
                    if not any(os.path.realpath(e).startswith(d + os.sep) for d in own)]
            env["PATH"] = os.pathsep.join([f"{view.env}/bin", *path])
            env["VIRTUAL_ENV"] = view.env
        env.setdefault("PATH", os.defpath)
        if self.places.bwrap is not None:
            env.update(TMPDIR="/tmp", PWD=view.source)
            for name in AGENT_SOCKETS:  # hidden in the sandbox: pointing at them would only mislead
                env.pop(name, None)
        env.update(config.env)
        self.addopts = env.get("PYTEST_ADDOPTS", "")
        env.update(CI="true", TUICI_COMMIT=a.commit, TUICI_BRANCH=a.branch, TUICI_JOB_ID=str(a.job_id),
                   TUICI_ATTEMPT=str(a.attempt), **_junit_env(self.addopts, junit))
        return env

    def _section(self, title: str) -> None:
        self.write(f"── {title} ──\n".encode())

    # ------------------------------------------------------------------ processes

    async def _command(self, argv: list[str], cwd: Path, inner_cwd: str, env: dict[str, str],
                       sandbox: Sandbox | None, before: Callable[[], object] | None = None) -> tuple[int | None, bool]:
        """Run one command to its end; (exit code, timed out). Output goes to the job's log as it comes.

        The command is over when its main process exits, whatever it left running: that is killed (in the
        sandbox its PID namespace goes with it), and its output is read for at most ``DRAIN`` seconds more.
        ``before`` (with a sandbox): run in a thread while bwrap sets the sandbox up, the command held until it
        returns (bwrap's ``--block-fd``); if it raises, the command never runs.
        """
        control = self.control
        if control.cancelled:
            return None, False
        pass_fds: tuple[int, ...] = ()
        gate: tuple[int, int] | None = None
        if sandbox is not None:
            assert self.places.bwrap is not None
            # bwrap's arguments through a descriptor: its command line, visible inside as PID 1's, names the
            # hidden paths.
            args = sandbox.argv(argv, inner_cwd, self.places.bwrap)
            options = args.index("--")
            fd = _args_fd(args[1:options])
            pass_fds = (fd,)
            held = []
            if before is not None:
                gate = os.pipe()
                pass_fds += (gate[0],)
                held = ["--block-fd", str(gate[0])]
            argv = [args[0], "--args", str(fd), *held, *args[options:]]
            cwd = self.places.workdir
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return None, True
        control.spawning = True
        try:
            proc = await spawn.start(argv, cwd, env, pass_fds, scoped=sandbox is not None and self.places.landlock,
                                     setpriv=self.places.setpriv, dies_with_parent=sandbox is not None)
        finally:
            control.spawning = False
            for fd in pass_fds:
                os.close(fd)
        control.pgid = proc.pid  # a cancel during the spawn has set control.stop: the wait ends at once
        reader = asyncio.ensure_future(self._pump(proc.output))
        exited = proc.exited
        stop: asyncio.Future[Any] = asyncio.ensure_future(control.stop.wait())
        timed_out = False
        released = gate is None
        try:
            if before is not None and gate is not None:
                await asyncio.to_thread(before)
                if not control.cancelled:
                    _release(gate[1])
                    released = True
                remaining = self.deadline - time.monotonic()
            await asyncio.wait([exited, stop], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                # Timed out or cancelled: SIGTERM to every process of it first, then SIGKILL to what is left.
                timed_out = not control.cancelled
                await asyncio.to_thread(_signal_tree, proc.pid, signal.SIGTERM)
                await asyncio.wait([exited], timeout=KILL_GRACE)
        finally:
            stop.cancel()
            # Nothing it started outlives it: not its group, nor what left the group (we are a subreaper).
            left = await asyncio.to_thread(kill_all_descendants, self.workspace.helpers())
            kill_group(proc.pid, signal.SIGKILL)
            await asyncio.gather(exited, return_exceptions=True)
            control.pgid = None
            done, _ = await asyncio.wait([reader], timeout=DRAIN)
            if not done:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            proc.close()
            if gate is not None:
                os.close(gate[1])  # only now that it is dead: a command never released must never run
            if left and released and not timed_out and not control.cancelled:
                self.write(f"\ntuici: the command exited; killed what it left running: {', '.join(left)}\n".encode())
        return exited.result() if not exited.cancelled() else None, timed_out

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while data := await stream.read(p.OUTPUT_CHUNK):
            self.write(data)


def _release(gate: int) -> None:
    """Let a command held by bwrap's ``--block-fd`` run."""
    try:
        os.write(gate, b"go")
    except BrokenPipeError:  # bwrap is gone already (it could not build the sandbox): its exit code says why
        pass


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to the command's processes (in the sandbox, the ones inside it, not bwrap itself)."""
    for proc in _tree(pid):
        try:
            if proc.name() != "bwrap":
                proc.send_signal(sig)
        except psutil.Error:
            pass
    kill_group(pid, sig)


# ---------------------------------------------------------------------- config


def read_config(workspace: Workspace, sha: str) -> tuple[cfg.RepoConfig, set[str]]:
    """The config committed at ``sha``, read from git's objects (``cfg.read_committed`` for the observer, which
    has GitPython's cat-file running; the workspace's own running cat-file here: the commit's top tree, then the
    file's blob)."""
    tree = workspace.objects.read(f"{sha}^{{tree}}", TREE_LIMIT)
    if tree is None or tree[0] != "tree":
        raise JobError(f"git cannot read the tree of commit {sha}")
    if tree[2] is None:
        raise JobError(f"the top directory of commit {sha} lists {tree[1]} bytes of entries, more than the "
                       f"{TREE_LIMIT} the runner reads to find its config")
    every = cfg.tree_entries(tree[2], len(sha) // 2)
    names = {os.fsdecode(name) for name in every}
    entries = {name: every[name.encode()] for name in ("tuici.toml", "pyproject.toml") if name.encode() in every}

    def read(name: str) -> bytes | None:
        if name not in entries:
            return None
        mode, obj = entries[name]
        if mode in _NOT_FILES:
            cfg.check_entry(name, mode, _NOT_FILES[mode], 0, sha)  # raises
        found = workspace.objects.read(obj, cfg.MAX_CONFIG_BYTES)
        if found is None:
            raise JobError(f"git cannot read {name} of commit {sha}")
        kind, size, data = found
        cfg.check_entry(name, mode, kind, size, sha)
        assert data is not None  # within the limit, as check_entry saw
        return data

    # The config is a function of its files' contents, which their object ids name: parsed once for each.
    key = tuple(sorted(entries.items()))
    config = _PARSED.get(key)
    if config is None:
        config = cfg.load(read)
        if len(_PARSED) >= PARSED_CONFIGS:
            _PARSED.clear()
        _PARSED[key] = config
    return config, names


# Configs parsed, by the (name, (mode, object id)) of the files they came from; jobs only read them (never changed).
_PARSED: dict[tuple[tuple[str, tuple[int, str]], ...], cfg.RepoConfig] = {}
PARSED_CONFIGS = 64

_NOT_FILES = {0o040000: "tree", 0o160000: "commit"}  # a directory, a submodule


# ---------------------------------------------------------------------- helpers


def _junit_env(addopts: str, junit: str) -> dict[str, str]:
    """Where a run writes its JUnit XML: told to pytest (after the options already set) and to any other tool."""
    return {"TUICI_JUNIT_XML": junit, "PYTEST_ADDOPTS": f"{addopts} --junitxml={junit}".strip()}


@functools.lru_cache(maxsize=16)
def _entries_within(search_path: str, dirs: tuple[Path, ...]) -> tuple[Path, ...]:
    """The absolute entries of ``search_path`` (a PATH) in one of ``dirs``: worked out once for each PATH (for
    each job, a long PATH against every hidden dir cost a millisecond of path arithmetic)."""
    entries = (Path(entry) for entry in search_path.split(os.pathsep) if entry and os.path.isabs(entry))
    return tuple(path for path in entries if any(path.is_relative_to(d) for d in dirs))


def _session_dirs() -> tuple[Path, ...]:
    """The user's session runtime dirs, with their sockets (D-Bus, agents, a rootless container engine): a
    read-only bind would not stop a connect()."""
    dirs = {Path("/run/user"), Path(os.environ["XDG_RUNTIME_DIR"]) if os.environ.get("XDG_RUNTIME_DIR") else None}
    return tuple(sorted(d for d in dirs if d is not None))


def _default_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def _source_name(url: str) -> str:
    """The checkout's directory name inside the sandbox: the repository's, as a clone would have."""
    name = re.sub(r"\.git$", "", os.path.basename(url.rstrip("/"))) if url else ""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name if name and name not in ("env", "junit", "bin", "shims", "packages") else "src"


def _branch_dir(branch: str) -> str:
    import hashlib

    return hashlib.sha256(branch.encode()).hexdigest()[:16]


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))


def _args_fd(args: list[str]) -> int:
    """A descriptor to read options from, NUL-separated (bwrap's ``--args``; the command stays on the line)."""
    data = b"".join(os.fsencode(arg) + b"\0" for arg in args)
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("bwrap-args")
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd
    read, write = os.pipe()
    os.write(write, data)  # bwrap's arguments are far below a pipe's buffer
    os.close(write)
    return read


def _link(link: Path, target: Path) -> None:
    link.unlink(missing_ok=True)
    link.symlink_to(target)


def _write_shims(folder: Path, uv: str) -> None:
    """``pip`` and ``pip3`` that run ``uv pip``, so that ``pip install`` in a setup command takes the fast path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("pip", "pip3"):
        path = folder / name
        text = f'#!/bin/sh\nexec "{uv}" pip "$@"\n'
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            path.chmod(0o755)

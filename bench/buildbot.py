"""Buildbot beside tuici (issue 15): Buildbot installed by the bench into a virtualenv of its own, a master and its
workers run as processes of the run's ``Procs``, and what they did read back.

Buildbot is never a dependency of tuici: its virtualenv lives in the bench's cache dir (``$TUICI_BENCH_CACHE``, else
``$XDG_CACHE_HOME/tuici-bench``, else ``~/.cache/tuici-bench``), one per Buildbot and Python version, made once and
reused by later runs. Where it cannot be made (no network, pip failing) the Buildbot rows are skipped with the reason.

The master and workers run in the foreground (``--nodaemon``), so the bench owns their pids and stops them like its
other processes. The generated ``master.cfg`` is a constant text reading ``bench-settings.json`` beside it: SQLite,
workers on 127.0.0.1 with a password, one builder (a Git step, then a ShellCommand), every commit its own build
(``collapseRequests=False``, no tree-stable timer), changes from Buildbot's GitPoller or from its web change hook
(``base`` dialect, on 127.0.0.1, which needs the ``buildbot-www`` package) that git's post-commit, post-merge and
post-receive hooks call with curl. A small service in the master writes the time of each change, build start,
build end and worker connection to ``bench-events.jsonl``, the way tuici's dispatcher stamps its jobs.
"""

from __future__ import annotations

import bz2
import fcntl
import json
import os
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from .harness import PY, BenchError, Procs, RowSkipped, wait_for

VERSION = "4.3.0"
PACKAGES = (f"buildbot=={VERSION}", f"buildbot-worker=={VERSION}", f"buildbot-www=={VERSION}")
PASSWORD = "bench-worker-password"
SUCCESS = 0  # Buildbot's result codes: SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED
RESULTS = {0: "passed", 1: "passed", 2: "failed", 3: "skipped", 4: "error", 5: "error", 6: "cancelled"}

UNPACK: dict[int, Callable[[bytes], bytes]] = {0: bytes, 1: zlib.decompress, 2: bz2.decompress}  # log chunks

Source = Literal["hook", "poller"]  # how the master hears of commits: the web change hook, or its GitPoller

MASTER_CFG = '''\
# -*- python -*-
# Written by tuici's bench (bench/buildbot.py); the settings are in bench-settings.json beside it.
import json
import os
import time

from twisted.internet import defer

from buildbot.plugins import changes, schedulers, steps, util, worker
from buildbot.util import service

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "bench-settings.json")) as fh:
    S = json.load(fh)


class BenchEvents(service.BuildbotService):
    """Writes the time of each change, build start, build end and worker connection, as they happen."""

    name = "bench-events"
    KEYS = (("changes", None, "new"), ("builds", None, "new"), ("builds", None, "finished"),
            ("workers", None, "connected"))
    FIELDS = ("changeid", "revision", "buildid", "buildrequestid", "workerid", "results", "name")

    def reconfigService(self, path):
        self.path = path

    @defer.inlineCallbacks
    def startService(self):
        yield super().startService()
        self.out = open(self.path, "a", buffering=1)
        self.consumers = []
        for key in self.KEYS:
            consumer = yield self.master.mq.startConsuming(self.record, key)
            self.consumers.append(consumer)

    def record(self, key, msg):
        at = time.time()
        self.out.write(json.dumps({"t": at, "kind": key[0] + "." + key[-1],
                                   **{k: msg.get(k) for k in self.FIELDS}}) + "\\n")

    @defer.inlineCallbacks
    def stopService(self):
        for consumer in self.consumers:
            yield consumer.stopConsuming()
        self.out.close()
        yield super().stopService()


c = BuildmasterConfig = {}
c["buildbotNetUsageData"] = None  # no usage report sent anywhere
c["title"] = "tuici bench"
c["db"] = {"db_url": "sqlite:///state.sqlite"}
c["protocols"] = {"pb": {"port": "tcp:%d:interface=127.0.0.1" % S["pb_port"]}}
c["workers"] = [worker.Worker(name, S["password"]) for name in S["workers"]]
c["collapseRequests"] = False
if S["source"] == "poller":
    c["change_source"] = [changes.GitPoller(repourl=S["repo"], branches=["main"], pollInterval=S["poll_interval"],
                                            pollAtLaunch=True, workdir="gitpoller-work")]
else:
    c["buildbotURL"] = "http://127.0.0.1:%d/" % S["www_port"]
    c["www"] = {"port": "tcp:%d:interface=127.0.0.1" % S["www_port"], "change_hook_dialects": {"base": True},
                "plugins": {}}
c["schedulers"] = [schedulers.AnyBranchScheduler(name="commits", treeStableTimer=None, builderNames=["test"])]
factory = util.BuildFactory()
factory.addStep(steps.Git(repourl=S["repo"], mode="full", method="fresh"))
factory.addStep(steps.ShellCommand(command=["/bin/sh", "-c", util.Interpolate(S["command"])], env=S["env"]))
c["builders"] = [util.BuilderConfig(name="test", workernames=S["workers"], factory=factory,
                                    collapseRequests=False)]
c["services"] = [BenchEvents(os.path.join(HERE, "bench-events.jsonl"))]
'''

# Called by git after a commit (post-commit) and after a merge (post-merge), as a Buildbot user would set it up:
# curl posts the new tip to the change hook in the background, its output detached, so that git returns at once.
HOOK = """\
#!/bin/sh
rev=$(git rev-parse HEAD)
curl -s -o /dev/null --max-time 30 --data-urlencode "revision=$rev" --data-urlencode "branch=main" \\
  --data-urlencode {repository} --data-urlencode "author=Bench <bench@example.com>" \\
  --data-urlencode "comments=commit $rev" {url} </dev/null >/dev/null 2>&1 &
"""

# What a push runs on a shared repository (post-receive, as Buildbot's contrib/git_buildbot.py): a change posted for
# each new commit of each updated branch, oldest first, one after the other.
RECEIVE_HOOK = """\
#!/bin/sh
while read old new ref; do
  for rev in $(git rev-list --reverse "$old..$new"); do
    curl -s -o /dev/null --max-time 30 --data-urlencode "revision=$rev" \\
      --data-urlencode "branch=${{ref#refs/heads/}}" --data-urlencode {repository} \\
      --data-urlencode "author=Bench <bench@example.com>" --data-urlencode "comments=commit $rev" {url}
  done
done
"""


def cache_dir() -> Path:
    """Where the bench keeps what it installs for itself, across runs."""
    if os.environ.get("TUICI_BENCH_CACHE"):
        return Path(os.environ["TUICI_BENCH_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tuici-bench"


@dataclass
class Install:
    """Buildbot's virtualenv: its commands, and the versions pip installed into it."""

    venv: Path
    versions: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def install(say: Callable[[str], None]) -> Install:
    """Buildbot's virtualenv, made (under a lock: several benches may run at once) unless a finished one is there;
    ``RowSkipped`` with pip's last words where it cannot be made."""
    if shutil.which("curl") is None:
        raise RowSkipped("curl not found: the git hook that calls Buildbot's change hook posts with curl")
    root = cache_dir()
    venv = root / f"buildbot-{VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"
    done = venv / "bench-installed.json"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            say(f"installing {' '.join(PACKAGES)} into {venv} (once; later runs reuse it)")
            shutil.rmtree(venv, ignore_errors=True)
            steps = [[PY, "-m", "venv", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                      "--retries", "1", "--timeout", "20", *PACKAGES]]
            for argv in steps:
                try:
                    res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
                except subprocess.TimeoutExpired:
                    raise RowSkipped(f"Buildbot could not be installed: `{' '.join(argv[2:5])} ...` took over "
                                     "15 min") from None
                if res.returncode != 0:
                    words = (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
                    raise RowSkipped(f"Buildbot could not be installed: `{' '.join(argv[2:5])} ...` exited "
                                     f"{res.returncode}: {' / '.join(words)}")
            freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True,
                                    text=True, check=True).stdout
            versions = dict(line.split("==", 1) for line in freeze.splitlines() if "==" in line)
            done.write_text(json.dumps(versions, indent=1))
    return Install(venv, json.loads(done.read_text()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Buildbot:
    """A Buildbot master and its workers for one repository, as processes of the run's ``Procs`` named
    ``TAG-master`` and ``TAG-wN``; each build checks out its commit (Git step) and runs ``command`` (an
    ``Interpolate`` text: ``%(prop:got_revision)s`` is the commit, a literal ``%`` is written ``%%``)."""

    def __init__(self, install: Install, procs: Procs, workdir: Path, tag: str, repo: Path, workers: int,
                 command: str, source: Source, env: dict[str, str] | None = None, poll_interval: float = 1.0):
        self.install = install
        self.procs = procs
        self.tag = tag
        self.repo = repo
        self.source = source
        self.workdir = workdir
        self.master_dir = workdir / "master"
        self.workers = [f"w{i + 1}" for i in range(workers)]
        self.events_path = self.master_dir / "bench-events.jsonl"
        self.pb_port, self.www_port = free_port(), free_port()
        self._run(install.bin("buildbot"), "create-master", "-q", "-r", str(self.master_dir))
        (self.master_dir / "master.cfg").write_text(MASTER_CFG)
        settings = {"pb_port": self.pb_port, "www_port": self.www_port, "password": PASSWORD,
                    "workers": self.workers, "source": source, "poll_interval": poll_interval, "repo": str(repo),
                    "command": command, "env": env or {}}
        (self.master_dir / "bench-settings.json").write_text(json.dumps(settings, indent=1))
        for name in self.workers:
            self._run(install.bin("buildbot-worker"), "create-worker", "-q", str(workdir / name),
                      f"127.0.0.1:{self.pb_port}", name, PASSWORD)
        if source == "hook":
            url = f"http://127.0.0.1:{self.www_port}/change_hook/base"
            for hook, text in (("post-commit", HOOK), ("post-merge", HOOK), ("post-receive", RECEIVE_HOOK)):
                path = repo / ".git" / "hooks" / hook
                path.write_text(text.format(repository=shlex.quote(f"repository={repo}"), url=url))
                path.chmod(0o755)

    @staticmethod
    def _run(*argv: str) -> None:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise BenchError(f"`{' '.join(argv[:3])}` failed: {(res.stderr or res.stdout).strip()[-500:]}")

    @property
    def names(self) -> list[str]:
        return [f"{self.tag}-master", *(f"{self.tag}-{w}" for w in self.workers)]

    def pids(self) -> list[int]:
        return [self.procs.procs[n].pid for n in self.names if n in self.procs.procs]

    def check_alive(self) -> None:
        self.procs.check_alive(*self.names)

    def start_master(self, timeout: float = 120.0) -> float:
        """Start the master; the time its log said it is running (what `buildbot start` waits for)."""
        log = self.master_dir / "twistd.log"
        offset = log.stat().st_size if log.exists() else 0
        self.procs.spawn(f"{self.tag}-master", [self.install.bin("buildbot"), "start", "--nodaemon",
                                                str(self.master_dir)])

        def running() -> bool:
            self.procs.check_alive(f"{self.tag}-master")
            try:
                with open(log, "rb") as fh:
                    fh.seek(offset)
                    return b"BuildMaster is running" in fh.read()
            except FileNotFoundError:
                return False

        wait_for(running, timeout, 0.01, f"{self.tag}: the Buildbot master running")
        return time.time()

    def start_workers(self) -> None:
        for name in self.workers:
            self.procs.spawn(f"{self.tag}-{name}", [self.install.bin("buildbot-worker"), "start", "--nodaemon",
                                                    str(self.workdir / name)])

    def wait_connected(self, since: float, timeout: float = 120.0) -> float:
        """Wait until every worker has connected after ``since``; the master's time of the last connection."""
        def connected() -> float | None:
            self.check_alive()
            seen = {e["name"]: e["t"] for e in self.events("workers.connected") if e["t"] >= since}
            return max(seen.values()) if len(seen) == len(self.workers) else None

        return wait_for(connected, timeout, 0.02, f"{self.tag}: {len(self.workers)} Buildbot workers connected")

    def start(self) -> None:
        since = time.time()
        self.start_master()
        self.start_workers()
        self.wait_connected(since)

    def stop(self) -> None:
        """Workers first, then the master (SIGTERM; SIGKILL to whatever outlives the grace)."""
        self.procs.stop([n for n in self.names[1:] if n in self.procs.procs], grace=20)
        self.procs.stop([n for n in self.names[:1] if n in self.procs.procs], grace=20)

    def notify(self) -> None:
        """Run the repository's post-commit hook by hand (for a commit made without one, such as the first)."""
        subprocess.run([str(self.repo / ".git" / "hooks" / "post-commit")], cwd=self.repo, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def pushed(self, old: str, new: str, branch: str = "main") -> None:
        """Run the post-receive hook as a push of ``old..new`` to ``branch`` would (for commits that arrived
        without a hook, such as a `git fast-import`)."""
        subprocess.run([str(self.repo / ".git" / "hooks" / "post-receive")], cwd=self.repo, check=True,
                       input=f"{old} {new} refs/heads/{branch}\n".encode(), stdout=subprocess.DEVNULL)

    # ------------------------------------------------------------------ what it did

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The master's events so far (a line still being written is left for the next call)."""
        try:
            text = self.events_path.read_text()
        except FileNotFoundError:
            return []
        lines = text.split("\n")[:-1]
        events = [json.loads(line) for line in lines if line]
        return [e for e in events if kind is None or e["kind"] == kind]

    def wait_finished(self, count: int, timeout: float, interval: float = 0.02) -> list[dict[str, Any]]:
        """Wait until ``count`` builds have finished in all; their finishing events."""
        def finished():
            self.check_alive()
            done = self.events("builds.finished")
            return done if len(done) >= count else None

        return wait_for(finished, timeout, interval, f"{self.tag}: {count} Buildbot builds finished")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.master_dir / 'state.sqlite'}?mode=ro", uri=True, timeout=30)

    def builds(self) -> dict[int, dict[str, Any]]:
        """Every finished build: its commit, result and (from the events) the time it started and ended."""
        db = self._db()
        try:
            rows = db.execute(
                "SELECT b.id, b.results, s.revision, b.workerid FROM builds b "
                "JOIN buildrequests r ON r.id = b.buildrequestid "
                "JOIN buildset_sourcestamps x ON x.buildsetid = r.buildsetid "
                "JOIN sourcestamps s ON s.id = x.sourcestampid WHERE b.complete_at IS NOT NULL").fetchall()
        finally:
            db.close()
        started = {e["buildid"]: e["t"] for e in self.events("builds.new")}
        ended = {e["buildid"]: e["t"] for e in self.events("builds.finished")}
        return {bid: {"results": results, "verdict": RESULTS.get(results, str(results)), "revision": rev,
                      "worker": worker, "started": started.get(bid), "finished": ended.get(bid)}
                for bid, results, rev, worker in rows}

    def command_seconds(self) -> dict[int, float]:
        """build id -> the time its steps' commands took, by the worker's own count (the ``elapsedTime`` each
        command's log ends with): what is left of a build's time is Buildbot's own."""
        db = self._db()
        try:
            chunks = db.execute("SELECT s.buildid, c.content, c.compressed FROM logchunks c "
                                "JOIN logs l ON l.id = c.logid JOIN steps s ON s.id = l.stepid").fetchall()
        finally:
            db.close()
        spent: dict[int, float] = {}
        for buildid, content, compressed in chunks:
            raw = content.encode() if isinstance(content, str) else content
            text = UNPACK[compressed](raw)
            for line in text.decode(errors="replace").splitlines():
                if line.startswith("helapsedTime="):
                    spent[buildid] = spent.get(buildid, 0.0) + float(line.split("=", 1)[1])
        return spent

    def changes(self) -> dict[str, float]:
        """revision -> the time the master recorded its change."""
        return {e["revision"]: e["t"] for e in self.events("changes.new")}

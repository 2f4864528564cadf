"""What the rows share: their sizes and context, the TOML of a job, starting a cluster and warming it up,
the loop of spaced-out jobs (job-overhead and environments), starting `tuici serve`, and history written
as a dispatcher records it."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import psutil

from .. import limits
from ..harness import PY, BenchError, Cluster, Procs, Profiler, Repo

if TYPE_CHECKING:
    from tuici.wire import JobInfo


# ---------------------------------------------------------------------- sizes and context


@dataclass
class Sizes:
    """Every size a row uses; ``--size KEY=VALUE`` overrides one, ``--quick`` picks tiny ones."""

    files: int = 1000  # files in the repository of the latency and overhead rows
    latency_commits: int = 50  # spaced-out commits timed from `git commit` to the test's start
    gap: float = 0.25  # seconds between spaced-out commits (plus up to 0.1 s of jitter)
    overhead_jobs: int = 30  # spaced-out jobs running `true`
    runners: int = 2  # runners in the latency, overhead and real-suite rows
    suite_seconds: float = 2.0  # aimed-at direct duration of the generated pytest suite
    suite_repeats: int = 21  # real-suite rounds: direct, clean checkout, tuici (this VM's CPU speed drifts +-20%)
    backlog_commits: int = 500  # commits made at once
    backlog_runners: str = "2,4"  # runner counts to try
    bisect_commits: str = "16,100"  # commits pushed at once (coalesced) for a bisection to search
    bisect_rounds: int = 5  # bisections per size, each with the regression somewhere else
    log_mb: int = 200  # megabytes (10^6) one job prints
    log_repeats: int = 3
    idle_seconds: float = 60.0
    idle_runners: int = 4
    startup_runners: int = 4
    startup_repeats: int = 5
    scale_runners: int = 50
    scale_history: int = 10_000  # finished jobs in history for `status --json`
    scale_sleep: float = 2.0  # seconds each feeding job runs, so that every runner is busy at once
    status_repeats: int = 7
    ui_lines_per_s: int = 100_000  # what the job prints while keys are pressed in the control center
    ui_presses: int = 200  # keys pressed meanwhile (j and k in turn)
    ui_history: int = 10_000  # commits in history for the control center's first frame
    ui_starts: int = 5  # control-center starts timed to their first frame, per way of starting
    tests_cases: int = 50_000  # test cases one job reports (tests-storage)
    tests_repeats: int = 3  # such jobs
    failover_rounds: int = 20  # takeovers timed, after SIGKILL and after a cut link each
    failover_lease: float = 5.0  # the lease of the dispatchers in the failover row (tuici's default)
    failover_backlog: int = 300  # commits at once, on SQLite and on PostgreSQL, 4 runners
    failover_latency: int = 20  # spaced commits timed to their test's start, on SQLite and on PostgreSQL
    bb_workers: int = 4  # Buildbot workers, and tuici runners beside them, in the backlog, idle, start-up, replay rows
    bb_commits: int = 20  # spaced-out commits each system tests in the Buildbot latency and overhead rows
    bb_backlog: int = 100  # commits made at once for each system
    bb_replay: int = 30  # commits of the generated history, merged a commit a second
    bb_replay_suite: float = 3.0  # aimed-at duration of that history's pytest suite, in seconds

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(files=50, latency_commits=5, gap=0.1, overhead_jobs=5, suite_seconds=0.3, suite_repeats=1,
                   backlog_commits=20, backlog_runners="2", bisect_commits="16", bisect_rounds=1, log_mb=5,
                   log_repeats=1, idle_seconds=2.0, idle_runners=2, startup_runners=2, startup_repeats=1,
                   scale_runners=4, scale_history=200, scale_sleep=0.5, status_repeats=2, ui_presses=12,
                   ui_history=200, ui_starts=1, tests_cases=2000, tests_repeats=1, failover_rounds=2,
                   failover_lease=2.0, failover_backlog=20, failover_latency=3, bb_workers=2, bb_commits=2,
                   bb_backlog=6, bb_replay=3, bb_replay_suite=0.5)

    def override(self, key: str, value: str) -> None:
        kinds = {f.name: f.type for f in fields(self)}
        if key not in kinds:
            raise ValueError(f"unknown size {key!r}; known: {', '.join(kinds)}")
        current = getattr(self, key)
        setattr(self, key, type(current)(value) if not isinstance(current, str) else value)


@dataclass
class Context:
    sizes: Sizes
    tmp: Path
    procs: Procs
    profiler: Profiler
    say: Callable[[str], None]
    quick: bool = False
    cache: dict = field(default_factory=dict)

    def rtt(self) -> dict[str, float]:
        if "rtt" not in self.cache:
            self.cache["rtt"] = limits.socket_rtt(self.procs, self.tmp / "rtt.sock")
        return self.cache["rtt"]

    def true_ms(self) -> dict[str, float]:
        if "true" not in self.cache:
            self.cache["true"] = limits.spawn_ms("true", repeats=10 if self.quick else 30)
        return self.cache["true"]

    def python_ms(self, code: str) -> dict[str, float]:
        key = f"python:{code}"
        if key not in self.cache:
            self.cache[key] = limits.python_ms(code, repeats=2 if self.quick else 5)
        return self.cache[key]

    def dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def toml(command: str, timeout: float = 60) -> str:
    return f"command = {json.dumps(command)}\ntimeout = {timeout}\n"


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def _ms_spread(st: dict[str, float], digits: int = 1) -> str:
    return (f"p99 {_fmt(st['p99'], digits)}, min {_fmt(st['min'], digits)}, max {_fmt(st['max'], digits)}, "
            f"n={st['n']}")


def _cluster(ctx: Context, tag: str, repo: Repo, runners: int, names: list[str] | None = None,
             runner_args: tuple[str, ...] = (), dispatcher_args: tuple[str, ...] = ()) -> Cluster:
    cluster = Cluster(ctx.procs, repo, ctx.dir(f"{tag}-work"), tag, dispatcher_args=dispatcher_args)
    cluster.start_dispatcher()
    for i in range(runners):
        cluster.start_runner(names[i] if names else f"r{i + 1}", *runner_args)
    cluster.start_observer()
    cluster.wait_runners(runners, timeout=60 + runners * 2)
    return cluster


def _warm_up(cluster: Cluster, repo: Repo, runners: int) -> None:
    """Let every runner make its clone before anything is timed: the tip's job, then one spaced commit each
    (the dispatcher gives each job to the runner idle longest)."""
    cluster.wait_jobs([repo.head()], timeout=120)
    for _ in range(runners - 1):
        sha, _ = repo.commit()
        cluster.wait_jobs([sha], timeout=120)


def _spaced_jobs(ctx: Context, cluster: Cluster, repo: Repo, timeout: float,
                 what: str = "") -> list[tuple[JobInfo, float]]:
    """``sizes.overhead_jobs`` spaced-out commits (``sizes.gap`` apart, plus up to 0.1 s of jitter), each waited
    for until its job has passed: (the job, the wall time its `git commit` returned) for each."""
    s = ctx.sizes
    done = []
    for _ in range(s.overhead_jobs):
        sha, returned = repo.commit()
        time.sleep(0.05)
        job = cluster.wait_jobs([sha], timeout=timeout, interval=0.03)[sha]
        if job.state != "passed":
            raise BenchError(f"{what}job {job.id} ended {job.state}: {job.error}")
        done.append((job, returned))
        time.sleep(s.gap + random.uniform(0, 0.1))
    return done


def _profiled(ctx: Context, row: str, cluster: Cluster, names: list[str]) -> None:
    ctx.profiler.start(row, {n: cluster.pid(n) for n in names})


def _profiled_pids(ctx: Context, row: str, pids: dict[str, int]) -> None:
    ctx.profiler.start(row, pids)


def _plain_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TUICI_")}


# ---------------------------------------------------------------------- serve helpers


def _serve(ctx: Context, name: str, repo: Repo, runners: int, stdout=None) -> subprocess.Popen:
    (repo.state_path / "address").unlink(missing_ok=True)
    return ctx.procs.spawn(name, [PY, "-m", "tuici", "serve", str(repo.path), "--runners", str(runners), "--json"],
                           stdout=stdout, env={"XDG_CACHE_HOME": str(ctx.dir("serve-cache"))})


def _roles(serve_pid: int) -> dict[str, int]:
    roles = {}
    for child in psutil.Process(serve_pid).children():
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue
        if "dispatcher" in argv:
            roles["dispatcher"] = child.pid
        elif "observer" in argv:
            roles["observer"] = child.pid
        elif "runner" in argv and "--name" in argv:
            roles[argv[argv.index("--name") + 1]] = child.pid
    return roles


def _leftovers() -> int:
    """Processes still below the bench after a serve was stopped (each is a leak)."""
    time.sleep(0.2)
    count = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "tuici" in " ".join(proc.cmdline()):
                count += 1
        except psutil.Error:
            pass
    return count


# ---------------------------------------------------------------------- history


def _prefill(repo: Repo, shas: list[str], runners: int) -> None:
    """History as a dispatcher records it: commits, finished jobs, attempts and events, written through
    tuici's own Store, for real commits. The dispatcher then loads it as after a restart."""
    from tuici import wire as p
    from tuici.store import Batch, Store

    async def fill() -> None:
        repo.state_path.mkdir(parents=True, exist_ok=True)
        store = Store(repo.state_path / "tuici.db")
        await store.run(store.open)
        try:
            batch = Batch()
            start = time.time() - 3 * len(shas)
            seq = 0

            def event(kind, **kw):
                nonlocal seq
                seq += 1
                batch.events.append(p.Event(seq=seq, ts=t, kind=kind, **kw))

            for i, sha in enumerate(shas):
                t = start + 3 * i
                runner = f"runner-{i % runners + 1}"
                commit = p.CommitInfo(sha=sha, branch="main", author="Bench", subject=f"bulk {i}", time=t)
                job = p.JobInfo(id=i + 1, commit=sha, branch="main", state="passed", runner=runner, attempts=1,
                                exit_code=0, duration_s=1.5, passed=120, failed=0, skipped=3, queued_at=t,
                                started_at=t + 0.05, finished_at=t + 1.6)
                batch.commits.append((commit, t))
                batch.jobs[job.id] = (job, 0)
                batch.attempts[(job.id, 1)] = p.AttemptInfo(job_id=job.id, attempt=1, runner=runner,
                                                            started_at=t + 0.05, ended_at=t + 1.6, outcome="passed")
                event("commit.seen", commit=commit)
                event("job.queued", job=job)
                event("job.finished", job=job)
            batch.tips["main"] = shas[-1]
            batch.meta["repo_url"] = str(repo.path)
            await store.run(store.write, batch)
        finally:
            store.shutdown()

    asyncio.run(fill())

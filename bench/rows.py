"""The benchmark rows: each starts real tuici processes on a real repository, measures one
figure of issue 5 end to end, measures its physical limit in the same run, and stops
everything it started."""

from __future__ import annotations

import asyncio
import json
import queue
import random
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import psutil

from . import _bare_app as bare_app
from . import limits
from ._tty import Frame, Terminal
from .harness import (
    PY,
    BenchError,
    Cluster,
    Figure,
    Procs,
    Profiler,
    Repo,
    RssSampler,
    cpu_seconds,
    git,
    make_wheel,
    summarize,
    wait_for,
    wait_quiet,
)

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
    suite_repeats: int = 21  # direct/tuici pairs of the real-suite row (this VM's CPU speed drifts +-20%)
    backlog_commits: int = 500  # commits made at once
    backlog_runners: str = "2,4"  # runner counts to try
    log_mb: int = 200  # megabytes (10^6) one job prints
    log_repeats: int = 3
    idle_seconds: float = 30.0
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

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(files=50, latency_commits=5, gap=0.1, overhead_jobs=5, suite_seconds=0.3, suite_repeats=1,
                   backlog_commits=20, backlog_runners="2", log_mb=5, log_repeats=1, idle_seconds=2.0,
                   idle_runners=2, startup_runners=2, startup_repeats=1, scale_runners=4, scale_history=200,
                   scale_sleep=0.5, status_repeats=2, ui_presses=12, ui_history=200, ui_starts=1)

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
             runner_args: tuple[str, ...] = ()) -> Cluster:
    cluster = Cluster(ctx.procs, repo, ctx.dir(f"{tag}-work"), tag)
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


def _profiled(ctx: Context, row: str, cluster: Cluster, names: list[str]) -> None:
    ctx.profiler.start(row, {n: cluster.pid(n) for n in names})


# ---------------------------------------------------------------------- commit -> test start


def commit_latency(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    stamps = ctx.dir("latency-stamps")
    command = "date +%s%N"  # printed, as the job's sandbox has a /tmp of its own and nowhere else to write
    repo = Repo(ctx.tmp / "latency-repo", toml(command, 30), files=s.files)
    cluster = _cluster(ctx, "latency", repo, s.runners)
    samples, observer, dispatch, runner = [], [], [], []
    try:
        _warm_up(cluster, repo, s.runners)
        _profiled(ctx, "commit-latency", cluster, ["dispatcher", "observer", "r1"])
        for i in range(s.latency_commits):
            sha, returned = repo.commit()
            time.sleep(0.05)
            job = cluster.wait_jobs([sha], timeout=60, interval=0.03)[sha]
            started = _printed_stamp(repo.state_path / "logs" / "jobs" / f"{job.id}.log") / 1e9
            samples.append((started - returned) * 1000)
            observer.append((job.queued_at - returned) * 1000)
            dispatch.append((job.started_at - job.queued_at) * 1000)
            runner.append((started - job.started_at) * 1000)
            if (i + 1) % 10 == 0:
                ctx.say(f"commit-latency: {i + 1}/{s.latency_commits}, last {samples[-1]:.0f} ms")
            time.sleep(s.gap + random.uniform(0, 0.1))
        ctx.profiler.stop()
        shas = [l.split()[0] for l in reversed(
            subprocess.run(["git", "log", "--format=%H %s", "-12"], cwd=repo.path, capture_output=True,
                           text=True).stdout.splitlines())]
    finally:
        ctx.profiler.stop()
        cluster.stop()
    g_obs = limits.git_observe_ms(repo.path)
    g_co = limits.git_checkout_ms(repo.path, shas, ctx.tmp)
    stamp = limits.stamp_delay_ms(stamps)
    rtt = ctx.rtt()
    floor = g_obs["p50"] + g_co["p50"] + stamp["p50"] + rtt["p50"]
    st = summarize(samples)
    limit = (f"{floor:.1f} ms = git observe {g_obs['p50']:.1f} + git checkout/clean {g_co['p50']:.1f} "
             f"+ sh/date {stamp['p50']:.1f} + RTT {rtt['p50']:.2f}")
    stages = {
        "commit -> queued (observer: inotify, git, report, durable write)": summarize(observer),
        "queued -> assigned (dispatcher)": summarize(dispatch),
        "assigned -> command started (runner: checkout, config, spawn)": summarize(runner),
    }
    details = {"stages_ms": stages, "files": s.files, "commits": s.latency_commits,
               "limits_ms": {"git_observe": g_obs, "git_checkout_clean": g_co, "sh_date_stamp": stamp, "rtt": rtt}}
    return [
        Figure("commit-latency", "commit -> test start, p50", "ms", st["p50"], "p50 <= 50 ms", st["p50"] <= 50,
               spread=f"min {st['min']:.1f}, max {st['max']:.1f}, n={st['n']}", limit=limit, stats=st,
               details=details),
        Figure("commit-latency", "commit -> test start, p99", "ms", st["p99"], "p99 <= 250 ms", st["p99"] <= 250,
               spread=f"n={st['n']} (p99 of {st['n']} samples ~ the max)", limit=f"{floor:.1f} ms (as above)",
               stats=st),
    ]


def _printed_stamp(log: Path) -> int:
    """The time a job's command printed (``date +%s%N``): the first line of its output that is a number."""
    return next(int(line) for line in log.read_text().splitlines() if line.isdigit())


# ---------------------------------------------------------------------- per-job overhead


def job_overhead(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    repo = Repo(ctx.tmp / "overhead-repo", toml("true", 30), files=s.files)
    cluster = _cluster(ctx, "overhead", repo, s.runners)
    walls, durations, commit_to_done = [], [], []
    try:
        _warm_up(cluster, repo, s.runners)
        _profiled(ctx, "job-overhead", cluster, ["dispatcher", "r1"])
        for i in range(s.overhead_jobs):
            sha, returned = repo.commit()
            time.sleep(0.05)
            job = cluster.wait_jobs([sha], timeout=60, interval=0.03)[sha]
            if job.state != "passed":
                raise BenchError(f"job {job.id} ended {job.state}: {job.error}")
            walls.append((job.finished_at - job.started_at) * 1000)
            durations.append(job.duration_s * 1000)
            commit_to_done.append((job.finished_at - returned) * 1000)
            time.sleep(s.gap + random.uniform(0, 0.1))
        ctx.profiler.stop()
        shas = [l for l in reversed(subprocess.run(["git", "log", "--format=%H", "-12"], cwd=repo.path,
                                                   capture_output=True, text=True).stdout.split())]
    finally:
        ctx.profiler.stop()
        cluster.stop()
    true = ctx.true_ms()
    g_co = limits.git_checkout_ms(repo.path, shas, ctx.tmp)
    overhead = [w - true["p50"] for w in walls]
    st = summarize(overhead)
    details = {
        "job_wall_ms (dispatcher: assigned -> result recorded)": summarize(walls),
        "command_duration_ms (as the runner measured it)": summarize(durations),
        "runner_prepare_and_delivery_ms (wall - duration)": summarize(w - d for w, d in zip(walls, durations)),
        "commit_to_result_ms": summarize(commit_to_done),
        "limits_ms": {"sh_true_direct": true, "git_checkout_clean": g_co},
        "files": s.files,
    }
    return [Figure("job-overhead", "per-job overhead (`true`)", "ms", st["p50"], "median <= 60 ms",
                   st["p50"] <= 60, spread=_ms_spread(st),
                   limit=f"`sh -c true` direct {true['p50']:.1f} ms; git checkout/clean alone {g_co['p50']:.1f} ms",
                   stats=st, details=details)]


# ---------------------------------------------------------------------- sandbox and environments


COLD_DEPENDENCIES = "six idna iniconfig packaging pluggy"


def _job_walls(ctx: Context, tag: str, config: str, runner_args: tuple[str, ...] = ()) -> list[float]:
    """Wall time (assigned -> result recorded) of spaced-out jobs with ``config``, after a warm-up job."""
    s = ctx.sizes
    repo = Repo(ctx.tmp / f"{tag}-repo", config, files=s.files)
    cluster = _cluster(ctx, tag, repo, 1, runner_args=runner_args)
    walls = []
    try:
        _warm_up(cluster, repo, 1)
        for _ in range(s.overhead_jobs):
            sha, _ = repo.commit()
            time.sleep(0.05)
            job = cluster.wait_jobs([sha], timeout=120, interval=0.03)[sha]
            if job.state != "passed":
                raise BenchError(f"{tag}: job {job.id} ended {job.state}: {job.error}")
            walls.append((job.finished_at - job.started_at) * 1000)
            time.sleep(s.gap + random.uniform(0, 0.1))
    finally:
        cluster.stop()
    return walls


def environments(ctx: Context) -> list[Figure]:
    """What the sandbox and `setup` environments cost a job: the same `true` jobs without the sandbox, in it,
    and in it with a reused environment; bubblewrap alone with and without a PID namespace; and one cold
    environment (an empty package cache) installing five dependencies from the package index."""
    from tuici.runner.sandbox import Sandbox, find_bwrap, probe

    bwrap = find_bwrap()
    problem = probe(bwrap)
    if problem is not None:
        raise BenchError(f"no sandbox on this machine: {problem}")
    off = summarize(_job_walls(ctx, "env-off", toml("true", 30), ("--sandbox", "off")))
    on = summarize(_job_walls(ctx, "env-on", toml("true", 30), ("--sandbox", "on")))
    reused = summarize(_job_walls(ctx, "env-reused", 'setup = "true"\n' + toml("true", 30), ("--sandbox", "on")))
    # The PID namespace alone: bwrap's own cost with and without it, on the sandbox tuici builds.
    base = Sandbox(fresh_tmp=ctx.dir("bwrap-tmp")).argv(["true"], "/", bwrap)
    without_pid = [a for a in base if a != "--unshare-pid"]
    without_pid[without_pid.index("--proc"):without_pid.index("--proc") + 2] = []
    repeats = 10 if ctx.quick else 40
    with_ns = limits.argv_ms(base, repeats)
    without_ns = limits.argv_ms(without_pid, repeats)
    pid_ns = with_ns["p50"] - without_ns["p50"]
    # A cold environment: a new branch's first job, with an empty package cache, five dependencies (from the
    # package index; --quick: wheels made here, so that the smoke test needs no network).
    names = COLD_DEPENDENCIES.split()
    # Outside /tmp, which the job's sandbox replaces with its own.
    wheels = Path(tempfile.mkdtemp(prefix="tuici-bench-wheels-", dir="/var/tmp"))
    try:
        if ctx.quick:
            requirements = " ".join(str(make_wheel(wheels, f"bench_{name}", "1.0", "VALUE = 1\n")) for name in names)
        else:
            requirements = COLD_DEPENDENCIES
        repo = Repo(ctx.tmp / "env-cold-repo", f'setup = "pip install {requirements}"\n' + toml("true", 300),
                    files=10)
        cluster = _cluster(ctx, "env-cold", repo, 1, runner_args=("--sandbox", "on"))
        try:
            job = cluster.wait_jobs([repo.head()], timeout=300)[repo.head()]
            log = (repo.state_path / "logs" / "jobs" / f"{job.id}.log").read_text(errors="replace")
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
    setup_s = re.search(r"── setup passed in ([0-9.]+) s ──", log)
    cold_note = "" if setup_s else f"job {job.state}: {job.error or log[-300:]}"
    sandbox_cost = on["p50"] - off["p50"]
    reuse_cost = reused["p50"] - on["p50"]
    details = {"job_wall_ms": {"sandbox off": off, "sandbox on": on, "sandbox on, environment reused": reused},
               "bwrap_ms": {"with PID namespace": with_ns, "without": without_ns}, "cold_log_tail": log[-2000:]}
    return [
        Figure("environments", "sandbox per job (on - off)", "ms", sandbox_cost, "-", None,
               spread=f"on p50 {on['p50']:.1f}, off p50 {off['p50']:.1f}, n={on['n']}",
               limit=f"bwrap alone {with_ns['p50']:.1f} ms per command", stats=on, details=details),
        Figure("environments", "PID namespace per job", "ms", pid_ns, "<= 5 ms", pid_ns <= 5,
               spread=f"bwrap {with_ns['p50']:.2f} vs {without_ns['p50']:.2f} ms without, n={with_ns['n']}",
               limit="0", stats=with_ns),
        Figure("environments", "environment reuse per job", "ms", reuse_cost, "<= 30 ms", reuse_cost <= 30,
               spread=f"reused p50 {reused['p50']:.1f}, no setup p50 {on['p50']:.1f}, n={reused['n']}",
               limit="0", stats=reused),
        Figure("environments", f"cold uv environment, {len(names)} dependencies", "s",
               float(setup_s.group(1)) if setup_s else None, "-", None, note=cold_note,
               spread="one job, empty cache; " + ("local wheels (--quick)" if ctx.quick else "from the index"),
               limit="-", error="" if setup_s else cold_note),
    ]


# ---------------------------------------------------------------------- real suite


SUITE_TEMPLATE = '''\
import hashlib
import json
import time

import pytest


@pytest.mark.parametrize("n", range({params}))
def test_hash_{i}(n):
    data = json.dumps({{"n": n, "items": list(range(500))}}).encode()
    for _ in range({loops}):
        data = hashlib.sha256(data).digest() * 32
    time.sleep({sleep})
    assert len(data) == 1024


def test_files_{i}(tmp_path):
    for k in range(20):
        (tmp_path / f"f{{k}}").write_text("x" * 1000)
    assert len(list(tmp_path.iterdir())) == 20


class TestModel{i}:
    @pytest.fixture
    def model(self):
        return {{"id": {i}, "tags": ["a", "b"], "values": list(range(100))}}

    def test_roundtrip(self, model):
        assert json.loads(json.dumps(model)) == model

    def test_sum(self, model):
        assert sum(model["values"]) == 4950
'''


def _suite_files(seconds: float) -> dict[str, str]:
    modules = 10 if seconds >= 1 else 3
    params = 10
    # roughly: pytest start-up ~0.7 s, then the tests' sleeps and hashing make up the rest
    budget = max(0.0, seconds - 0.8)
    sleep = round(budget * 0.6 / (modules * params), 4)
    loops = max(1, int(budget * 0.4 / (modules * params) / 2e-6))
    files = {f"tests/test_mod{i}.py": SUITE_TEMPLATE.format(i=i, params=params, sleep=sleep, loops=loops)
             for i in range(modules)}
    files["pytest.ini"] = "[pytest]\ntestpaths = tests\n"
    return files


def real_suite(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    command = f"{shlex.quote(PY)} -m pytest -q -p no:cacheprovider --junitxml=\"$TUICI_JUNIT_XML\""
    # The suite's own plugins only: the venv's (textual snapshots, hypothesis...) take ~2.5 s to import. And
    # .pyc files written and used on both sides, as on a developer's machine, whatever the bench inherits.
    suite_env = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": ""}
    config = toml(command, 300) + "env = { PYTEST_DISABLE_PLUGIN_AUTOLOAD = \"1\", PYTHONDONTWRITEBYTECODE = \"\" }\n"
    repo = Repo(ctx.tmp / "suite-repo", config, files=10, extra=_suite_files(s.suite_seconds))
    checkout = ctx.tmp / "suite-checkout"
    subprocess.run(["git", "clone", "-q", str(repo.path), str(checkout)], check=True)
    junit = ctx.tmp / "suite-direct.xml"

    def direct() -> float:
        t0 = time.perf_counter()
        res = subprocess.run(["/bin/sh", "-c", command], cwd=checkout, capture_output=True,
                             env={**_plain_env(), **suite_env, "TUICI_JUNIT_XML": str(junit)})
        if res.returncode != 0:
            raise BenchError(f"the suite fails when run directly: {res.stdout.decode()[-500:]}")
        return time.perf_counter() - t0

    def via_tuici():
        sha, returned = repo.commit()
        time.sleep(0.2)
        job = cluster.wait_jobs([sha], timeout=300, interval=0.5)[sha]
        if job.state != "passed":
            raise BenchError(f"the suite failed in tuici: job {job.id} {job.state} {job.error}")
        return job.finished_at - returned, job

    cluster = _cluster(ctx, "suite", repo, s.runners)
    directs, viatuici, in_runner, ratios, pairs = [], [], [], [], []
    try:
        direct()  # warm-up: .pyc files in the checkout, page cache
        _warm_up(cluster, repo, s.runners)
        _profiled(ctx, "real-suite", cluster, ["dispatcher", "r1"])
        for i in range(s.suite_repeats):
            # The pair's two runs back to back, in turn direct first and tuici first: the CPU's speed drifts
            # here from minute to minute, and a fixed order would also favour one side with a warmer cache.
            # (Each run starts after a gap: the runner cleans its workspace right after a job.)
            if i % 2:
                t, job = via_tuici()
                time.sleep(s.gap)
                d = direct()
            else:
                d = direct()
                time.sleep(s.gap)
                t, job = via_tuici()
            pairs.append({"first": "tuici" if i % 2 else "direct", "direct_s": round(d, 3), "tuici_s": round(t, 3),
                          "in_runner_s": round(job.duration_s, 3), "runner": job.runner})
            directs.append(d)
            viatuici.append(t)
            in_runner.append(job.duration_s)
            ratios.append(t / d)
            ctx.say(f"real-suite: direct {d:.2f} s, via tuici {t:.2f} s (tests: {job.passed} passed)")
            time.sleep(s.gap)
        ctx.profiler.stop()
    finally:
        ctx.profiler.stop()
        cluster.stop()
    sd, st = summarize(directs), summarize(viatuici)
    rs = summarize(ratios)
    ratio = rs["p50"]  # the median pair: each pair's runs are seconds apart, so drift cancels within it
    details = {"direct_s": sd, "commit_to_result_s": st, "command_in_runner_s": summarize(in_runner),
               "tuici_own_s (commit_to_result - command_in_runner)": summarize(t - c for t, c in zip(viatuici, in_runner)),
               "pair_ratios": rs, "ratio_of_medians": round(st["p50"] / sd["p50"], 4), "pairs": pairs}
    return [Figure("real-suite", "real suite: via tuici / direct", "ratio", ratio, "<= 1.05", ratio <= 1.05,
                   spread=f"median of {rs['n']} pairs (min {rs['min']:.3f}, max {rs['max']:.3f}); "
                          f"ratio of the medians {st['p50'] / sd['p50']:.3f}",
                   limit=f"1.000 (direct run {sd['p50']:.2f} s in a checkout)", stats=rs, details=details)]


def _plain_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TUICI_")}


# ---------------------------------------------------------------------- backlog


def backlog(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    figures = []
    floor_ms = None
    for n_runners in [int(x) for x in s.backlog_runners.split(",") if x.strip()]:
        tag = f"backlog{n_runners}"
        repo = Repo(ctx.tmp / f"{tag}-repo", toml("true", 30), files=10)
        cluster = _cluster(ctx, tag, repo, n_runners)
        try:
            _warm_up(cluster, repo, n_runners)
            _profiled(ctx, tag, cluster, ["dispatcher", "r1"])
            shas, made = repo.fast_import(s.backlog_commits)
            jobs = cluster.wait_jobs(shas, timeout=max(60.0, s.backlog_commits / 4), interval=0.5)
            ctx.profiler.stop()
            every = [j for j in cluster.status().jobs if j.commit in set(shas)]
        finally:
            ctx.profiler.stop()
            cluster.stop()
        if floor_ms is None:
            g_co = limits.git_checkout_ms(repo.path, shas[-12:], ctx.tmp)
            floor_ms = g_co["p50"] + ctx.true_ms()["p50"]
        last = max(j.finished_at for j in jobs.values())
        first = min(j.started_at for j in jobs.values())
        rate = len(shas) / (last - made)
        passed = sum(1 for j in jobs.values() if j.state == "passed")
        dupes = len(every) - len(jobs)
        retried = sum(1 for j in jobs.values() if j.attempts != 1)
        lost = len(shas) - passed
        per_runner: dict[str, int] = {}
        for j in jobs.values():
            per_runner[j.runner] = per_runner.get(j.runner, 0) + 1
        limit_rate = min(n_runners, limits.cores()) * 1000 / floor_ms
        ctx.say(f"backlog: {n_runners} runners: {rate:.1f} jobs/s, {passed}/{len(shas)} passed")
        figures.append(Figure(
            "backlog", f"backlog throughput, {n_runners} runners", "jobs/s", rate, ">= 40 jobs/s, none lost",
            rate >= 40 and lost == 0 and dupes == 0,
            spread=f"{passed}/{len(shas)} passed, {lost} lost, {dupes} duplicate, {retried} retried",
            limit=f"{limit_rate:.0f} jobs/s (git checkout/clean + `true` direct: {floor_ms:.1f} ms/job "
                  f"x {min(n_runners, limits.cores())} cores)",
            stats={"jobs_per_s": rate, "steady_jobs_per_s": (len(shas) - 1) / max(1e-9, last - first)},
            details={"commits": len(shas), "seconds_from_ref_update_to_last_result": last - made,
                     "first_assignment_after_ref_update_s": first - made, "jobs_per_runner": per_runner}))
    return figures


# ---------------------------------------------------------------------- log throughput


LOG_LINE = "tuici log throughput line: the quick brown fox jumps over the lazy dog 0123456789"


def log_throughput(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    total = s.log_mb * 1_000_000
    command = f"yes '{LOG_LINE}' | head -c {total}"
    repo = Repo(ctx.tmp / "log-repo", toml("true", 30), files=10)
    cluster = _cluster(ctx, "log", repo, 1)
    rates, peaks, runner_peaks = [], [], []
    try:
        _warm_up(cluster, repo, 1)
        disp = psutil.Process(cluster.pid("dispatcher"))
        baseline = disp.memory_info().rss
        _profiled(ctx, "log-throughput", cluster, ["dispatcher", "r1"])
        for i in range(s.log_repeats):
            with RssSampler({"dispatcher": cluster.pid("dispatcher"), "runner": cluster.pid("r1")}) as rss:
                sha, _ = repo.commit(files={"tuici.toml": toml(command, 600)} if i == 0 else None)
                job = cluster.wait_jobs([sha], timeout=600, interval=0.2)[sha]
            if job.state != "passed":
                raise BenchError(f"log job {job.id} ended {job.state}: {job.error}")
            stored = repo.state_path / "logs" / "jobs" / f"{job.id}.log"
            size = stored.stat().st_size
            if size < total or size != job.log_size:
                raise BenchError(f"stored log has {size} bytes, job says {job.log_size}, expected >= {total}")
            stored.unlink()
            rates.append(size / 1e6 / (job.finished_at - job.started_at))
            peaks.append(rss.peak["dispatcher"] / 2**20)
            runner_peaks.append(rss.peak["runner"] / 2**20)
            ctx.say(f"log-throughput: {rates[-1]:.0f} MB/s, dispatcher peak RSS {peaks[-1]:.0f} MiB")
        ctx.profiler.stop()
    finally:
        ctx.profiler.stop()
        cluster.stop()
    direct = limits.direct_write_mbps(command, total, ctx.tmp / "direct.log")
    sock = limits.socket_throughput(ctx.procs, total, ctx.tmp / "sock.log")
    st, pk = summarize(rates), summarize(peaks)
    return [
        Figure("log-throughput", f"log throughput ({s.log_mb} MB job)", "MB/s", st["p50"], ">= 150 MB/s",
               st["p50"] >= 150, spread=f"min {st['min']:.0f}, max {st['max']:.0f}, n={st['n']}",
               limit=f"command direct to a file {direct:.0f} MB/s; raw socket to a file {sock:.0f} MB/s",
               stats=st, details={"direct_mbps": direct, "socket_mbps": sock,
                                  "runner_peak_rss_mib": summarize(runner_peaks)}),
        Figure("log-throughput", "dispatcher peak RSS during it", "MiB", pk["max"], "< 100 MB", pk["max"] < 100,
               spread=f"baseline {baseline / 2**20:.0f} MiB before the job", stats=pk,
               limit=f"{baseline / 2**20:.0f} MiB (its RSS before the job)"),
    ]


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


# ---------------------------------------------------------------------- idle cost


def idle_cost(ctx: Context) -> list[Figure]:
    from .harness import Ctl

    s = ctx.sizes
    repo = Repo(ctx.tmp / "idle-repo", toml("true", 30), files=10)
    serve = _serve(ctx, "idle-serve", repo, s.idle_runners)
    try:
        wait_for(lambda: ctx.procs.check_alive("idle-serve") or (repo.state_path / "address").exists(), 30, 0.05,
                 "serve's dispatcher")
        ctl = Ctl(repo.state_path)
        try:
            def ready():
                st = ctl.status()
                return (sum(1 for r in st.runners if r.state == "idle") >= s.idle_runners
                        and st.jobs and all(j.state == "passed" for j in st.jobs))
            wait_for(ready, 60, 0.1, "runners registered and the first job done")
        finally:
            ctl.close()
        time.sleep(0.5 if ctx.quick else 2.0)  # let start-up work settle
        roles = _roles(serve.pid)
        if len(roles) < 2 + s.idle_runners:
            raise BenchError(f"serve children not found: {roles}")
        engine = list(roles.values())
        windows = 6 if s.idle_seconds >= 6 else 2
        step = s.idle_seconds / windows
        _profiled_pids(ctx, "idle", roles)
        t0 = time.monotonic()
        base_engine, base_sup = cpu_seconds(engine), cpu_seconds([serve.pid])
        per0 = {name: cpu_seconds([pid]) for name, pid in roles.items()}
        last, win = base_engine, []
        for w in range(windows):
            time.sleep(step)
            now = cpu_seconds(engine)
            win.append((now - last) / step * 100)
            last = now
        wall = time.monotonic() - t0
        total = (cpu_seconds(engine) - base_engine) / wall * 100
        sup = (cpu_seconds([serve.pid]) - base_sup) / wall * 100
        per = {name: round((cpu_seconds([pid]) - per0[name]) / wall * 100, 3) for name, pid in roles.items()}
        ctx.profiler.stop()
    finally:
        ctx.profiler.stop()
        ctx.procs.stop(["idle-serve"], grace=20)
    leaks = _leftovers()
    ws = summarize(win)
    return [
        Figure("idle", f"idle cost: dispatcher + observer + {s.idle_runners} runners, {s.idle_seconds:.0f} s",
               "% of a core", total, "< 1% of one core", total < 1,
               spread=f"{windows} windows of {step:.0f} s: min {ws['min']:.2f}, max {ws['max']:.2f}",
               limit="0 (an idle process need not wake up)", stats=ws,
               details={"per_process_pct": per, "supervisor_pct": sup, "processes_left_after_stop": leaks}),
        Figure("idle", "idle cost: the `tuici serve` supervisor itself", "% of a core", sup, "(not in issue 5)",
               None, limit="0", note="measured over the same window"),
    ]


def _profiled_pids(ctx: Context, row: str, pids: dict[str, int]) -> None:
    ctx.profiler.start(row, pids)


# ---------------------------------------------------------------------- start-up


def startup(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    repo = Repo(ctx.tmp / "startup-repo", toml("true", 30), files=10)
    times, seen_times, stops, leaks = [], [], [], 0
    warm = 0 if ctx.quick else 1  # the first start (new state dir, cold caches) is a discarded warm-up
    for r in range(s.startup_repeats + warm):
        lines: queue.Queue = queue.Queue()
        t0 = time.time()
        serve = _serve(ctx, "startup-serve", repo, s.startup_runners, stdout=subprocess.PIPE)
        reader = threading.Thread(target=_read_lines, args=(serve.stdout, lines), daemon=True)
        reader.start()
        joined: dict[str, float] = {}
        seen = None
        try:
            deadline = time.monotonic() + 60
            while len(joined) < s.startup_runners:
                if time.monotonic() > deadline:
                    raise BenchError(f"only {len(joined)} runners joined within 60 s: "
                                     f"{ctx.procs.log_tail('startup-serve')}")
                try:
                    at, line = lines.get(timeout=1.0)
                except queue.Empty:
                    ctx.procs.check_alive("startup-serve")
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("kind") == "runner.joined":
                    joined[event["runner"]["name"]] = event["ts"]
                    seen = at
        finally:
            t_stop = time.monotonic()
            ctx.procs.stop(["startup-serve"], grace=20)
            stop_s = time.monotonic() - t_stop
            reader.join(5)
        leaks += _leftovers()
        if r < warm:
            continue
        times.append(max(joined.values()) - t0)
        seen_times.append(seen - t0)
        stops.append(stop_s)
        ctx.say(f"startup: {times[-1]:.2f} s to {s.startup_runners} runners registered; stop {stop_s:.2f} s")
    imports = {
        "python -c pass": ctx.python_ms("pass"),
        "serve (import tuici.cli, tuici.serve)": ctx.python_ms("import tuici.cli, tuici.serve"),
        "dispatcher (import tuici.cli, tuici.dispatcher)": ctx.python_ms("import tuici.cli, tuici.dispatcher"),
        "runner (import tuici.cli, tuici.runner)": ctx.python_ms("import tuici.cli, tuici.runner"),
        "observer (import tuici.cli, tuici.observer)": ctx.python_ms("import tuici.cli, tuici.observer"),
    }
    serve_ms, dispatcher_ms, runner_ms, observer_ms = (imports[k]["p50"] for k in list(imports)[1:])
    # serve starts the dispatcher, the observer and the runners at once: its interpreter, then the slower of the
    # dispatcher's and a runner's; unless the cores cannot run all those interpreters that fast.
    chain = serve_ms + max(dispatcher_ms, runner_ms)
    cpu_bound = serve_ms + (dispatcher_ms + observer_ms + s.startup_runners * runner_ms) / limits.cores()
    st = summarize(times)
    return [
        Figure("startup", f"start-up: `tuici serve --runners {s.startup_runners}` to all registered", "s",
               st["p50"], "<= 1 s", st["p50"] <= 1,
               spread=f"min {st['min']:.2f}, max {st['max']:.2f}, n={st['n']}",
               limit=f"{max(chain, cpu_bound) / 1000:.2f} s: serve's interpreter with its imports, then "
                     f"{s.startup_runners + 2} more at once ({chain / 1000:.2f} s in sequence, {cpu_bound / 1000:.2f} s "
                     f"on {limits.cores()} cores); bare `python -c pass` {imports['python -c pass']['p50']:.0f} ms",
               stats=st, details={"imports_ms": imports, "seen_on_stdout_s": summarize(seen_times),
                                  "stop_s": summarize(stops), "processes_left_after_stop": leaks}),
        Figure("startup", "stop: SIGTERM to `tuici serve` exiting", "s", summarize(stops)["p50"], "(not in issue 5)",
               None, spread=f"{leaks} processes left behind", limit="-"),
    ]


def _read_lines(stream, out: queue.Queue) -> None:
    try:
        for line in iter(stream.readline, b""):
            out.put((time.time(), line))
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------- scale


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


def scale(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    repo = Repo(ctx.tmp / "scale-repo", toml(f"sleep {s.scale_sleep}", 60), files=10)
    history, _ = repo.fast_import(s.scale_history)
    repo.sync_worktree()
    _prefill(repo, history, s.scale_runners)
    # the floor of a `tuici status` command, measured while the machine is quiet (before 50 runners start)
    startup_ms = ctx.python_ms("import tuici.cli")
    bare = ctx.python_ms("pass")
    cluster = Cluster(ctx.procs, repo, ctx.dir("scale-work"), "scale")
    names = [f"runner-{i + 1}" for i in range(s.scale_runners)]
    try:
        cluster.start_dispatcher()
        cluster.start_observer()
        before = len(cluster.status().jobs)
        if before < s.scale_history:
            raise BenchError(f"the dispatcher loaded {before} jobs, expected {s.scale_history}")
        t0 = time.time()
        for name in names:
            cluster.start_runner(name)
        registered = cluster.wait_runners(s.scale_runners, timeout=60 + 2 * s.scale_runners) - t0
        ctx.say(f"scale: {s.scale_runners} runners registered in {registered:.1f} s")
        _profiled(ctx, "scale", cluster, ["dispatcher"])
        feed, made = repo.fast_import(s.scale_runners, path="bench/feed.txt")
        jobs = cluster.wait_jobs(feed, timeout=120 + s.scale_sleep * 4, interval=0.25)
        fed = {j.runner for j in jobs.values()}
        passed = sum(1 for j in jobs.values() if j.state == "passed")
        all_started = max(j.started_at for j in jobs.values()) - made
        lost = sum(1 for r in cluster.status().runners if r.state == "lost")
        # `tuici status --json`, the command a user or script runs, once the 50 runners have cleaned their
        # workspaces after those jobs (seconds of CPU on 2 cores, which would otherwise be timed with it)
        settled = wait_quiet()
        wall, size, njobs = [], 0, 0
        for _ in range(s.status_repeats):
            t = time.perf_counter()
            res = subprocess.run([PY, "-m", "tuici", "status", "--json"], cwd=repo.path, capture_output=True,
                                 env=_plain_env())
            wall.append((time.perf_counter() - t) * 1000)
            if res.returncode != 0:
                raise BenchError(f"status --json failed: {res.stderr.decode()[-300:]}")
            size = len(res.stdout)
        njobs = len(json.loads(res.stdout)["jobs"])
        rpc = []
        for _ in range(max(3, s.status_repeats)):
            t = time.perf_counter()
            cluster.status()
            rpc.append((time.perf_counter() - t) * 1000)
        ctx.profiler.stop()
    finally:
        ctx.profiler.stop()
        cluster.stop()
    rtt = ctx.rtt()
    st, rp = summarize(wall), summarize(rpc)
    all_fed = len(fed) == s.scale_runners and passed == len(feed) and lost == 0
    return [
        Figure("scale", f"scale: {s.scale_runners} runners registered and fed", "s", registered,
               "all registered and fed", all_fed,
               spread=f"{len(fed)}/{s.scale_runners} runners got a job, {passed}/{len(feed)} passed, {lost} lost; "
                      f"all assigned {all_started:.2f} s after the ref update",
               limit=f"{s.scale_runners} interpreter starts on {limits.cores()} cores",
               stats={"registered_s": registered, "all_assigned_s": all_started},
               note="value: seconds from starting the runners until all were registered"),
        Figure("scale", f"`tuici status --json`, {njobs} jobs in history", "ms", st["p50"], "<= 200 ms",
               st["p50"] <= 200, spread=f"min {st['min']:.0f}, max {st['max']:.0f}, n={st['n']}; "
                                        f"{size / 1e6:.1f} MB of JSON; request alone {rp['p50']:.0f} ms; "
                                        f"machine quiet after {settled:.1f} s",
               limit=f"{startup_ms['p50'] + rtt['p50']:.0f} ms = interpreter + tuici.cli imports "
                     f"{startup_ms['p50']:.0f} (bare python {bare['p50']:.0f}) + RTT {rtt['p50']:.2f}",
               stats=st, details={"status_request_in_process_ms": rp, "json_bytes": size, "waited_for_quiet_s": round(settled, 2),
                                  "history_note": "history pre-filled through tuici.store.Store for real commits"}),
    ]


# ---------------------------------------------------------------------- control center


UI_SIZE = (120, 40)  # columns and rows of the terminal the apps are measured in
UI_ROWS = 200  # finished commits under the one whose job prints, in the keypress figure
FLOOD_LINE = "flood {:09d} the quick brown fox jumps over the lazy dog\n"
FLOOD_SHOWN = re.compile(r"flood (\d{9})")
FLOOD_SCRIPT = f"LINE = {FLOOD_LINE!r}\n" + '''\
"""Print RATE lines a second, a write every 10 ms, for SECONDS."""
import sys
import time

rate, seconds = int(sys.argv[1]), float(sys.argv[2])
batch = max(1, rate // 100)
out = sys.stdout.buffer
start, n = time.monotonic(), 0
while n < rate * seconds:
    out.write("".join(LINE.format(i) for i in range(n, n + batch)).encode())
    out.flush()
    n += batch
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
'''


def _ui_env(ctx: Context) -> dict[str, str]:
    """Settings and runner clones in the temp dir, never the user's."""
    return {"XDG_CONFIG_HOME": str(ctx.dir("ui-config")), "XDG_CACHE_HOME": str(ctx.dir("ui-cache"))}


def _open(ctx: Context, name: str, argv: list[str], ready: Callable[[Frame], bool],
          what: str) -> tuple[Terminal, Frame]:
    """Start an app on a pty; it and the first frame that shows ``what``."""
    term = Terminal(ctx.procs, name, argv, UI_SIZE, env=_ui_env(ctx))
    try:
        return term, term.wait(ready, term.started, 60, what)
    except BaseException:
        term.close()
        raise


def _home(frame: Frame) -> tuple[int, int]:
    """Where the marker of the selected row is: in the leftmost table (the commits), its top one."""
    return min(frame.cells(bare_app.MARKER), key=lambda cell: (cell[1], cell[0]))


def _presses(term: Terminal, home: tuple[int, int], count: int) -> list[float]:
    """Milliseconds from each key to the first frame that shows its effect: ``j`` and ``k`` in turn move
    the selection off ``home`` and back (``count`` rounded up to even, so it ends at home), at random
    moments so that keys do not fall in step with the app's timers."""
    row, col = home
    samples = []
    for i in range(count + count % 2):
        key, want = (b"j", (row + 1, col)) if i % 2 == 0 else (b"k", (row, col))
        typed = term.press(key)
        frame = term.wait(lambda f: want in f.cells(bare_app.MARKER), typed, 10, f"the selection at {want}")
        samples.append((frame.at - typed) * 1000)
        time.sleep(random.uniform(0.02, 0.08))
    return samples


def _bare_presses(ctx: Context, name: str, count: int) -> list[float]:
    term, first = _open(ctx, name, [PY, "-m", "bench._bare_app"], lambda f: bare_app.MARKER in f.text, "the bare app")
    try:
        return _presses(term, _home(first), count)
    finally:
        term.close(b"q")


class _Following:
    """What the output panel shows while keys are pressed: frames drawn and the newest log line in them."""

    def __init__(self) -> None:
        self.frames = 0
        self.newest = -1
        self.advanced = 0  # frames that showed a newer line

    def see(self, frame: Frame) -> None:
        self.frames += 1
        numbers = FLOOD_SHOWN.findall(frame.plain())
        if numbers and int(max(numbers)) > self.newest:
            self.newest = int(max(numbers))
            self.advanced += 1


def _keypress_under_flood(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    command = f"{shlex.quote(PY)} flood.py {s.ui_lines_per_s} 3600"
    repo = Repo(ctx.tmp / "cc-flood-repo", toml(command, 7200), files=10, extra={"flood.py": FLOOD_SCRIPT})
    history, _ = repo.fast_import(UI_ROWS)
    repo.sync_worktree()
    _prefill(repo, history, 1)
    cluster = _cluster(ctx, "cc-flood", repo, 1)
    try:
        sha, _ = repo.commit()
        subject = git(repo.path, "log", "-1", "--format=%s")

        def printing():
            job = next((j for j in cluster.status().jobs if j.commit == sha), None)
            return job if job is not None and job.state == "running" and job.log_size else None
        job = wait_for(printing, 60, 0.1, "the printing job to start")
        log = repo.state_path / "logs" / "jobs" / f"{job.id}.log"
        # the newest commit is selected at start; Enter shows its job's output, following it
        app, first = _open(ctx, "cc-app", [PY, "-m", "tuici", str(repo.path)],
                           lambda f: bare_app.MARKER in f.text and subject in f.plain(), "the commits")
        try:
            home = _home(first)
            shown = _Following()
            app.watch = shown.see
            app.wait(lambda f: FLOOD_SHOWN.search(f.plain()), app.press(b"\r"), 30, "the job's output")
            rss = psutil.Process(app.pid).memory_info().rss
            size0, t0, newest0, frames0 = log.stat().st_size, time.monotonic(), shown.newest, shown.frames
            cpu0 = cpu_seconds([app.pid])
            half = s.ui_presses // 2
            _profiled_pids(ctx, "control-center", {"app": app.pid, "dispatcher": cluster.pid("dispatcher")})
            with RssSampler({"app": app.pid}) as early:
                samples = _presses(app, home, half)
            with RssSampler({"app": app.pid}) as late:
                samples += _presses(app, home, s.ui_presses - half)
            size1, t1, cpu1 = log.stat().st_size, time.monotonic(), cpu_seconds([app.pid])
            ctx.profiler.stop()
            newest1, advanced, frames = shown.newest, shown.advanced, shown.frames - frames0
        finally:
            ctx.profiler.stop()
            app.close(b"q")
        ctx.say(f"control-center: keypress -> repaint p50 {summarize(samples)['p50']:.1f} ms under the flood")
        bare = _bare_presses(ctx, "cc-bare-flood", s.ui_presses)
    finally:
        cluster.stop()
    quiet = _bare_presses(ctx, "cc-bare-quiet", max(2, s.ui_presses // 2))
    st, bs, qs = summarize(samples), summarize(bare), summarize(quiet)
    line = len(FLOOD_LINE.format(0))
    printed = (size1 - size0) / line
    rate = printed / (t1 - t0)
    early_mib, late_mib = early.peak["app"] / 2**20, late.peak["app"] / 2**20
    limit = (f"bare Textual app, same pty, during the same flood: p50 {bs['p50']:.1f} ms, p99 {bs['p99']:.1f}, "
             f"max {bs['max']:.1f} (machine quiet: p50 {qs['p50']:.1f})")
    details = {
        "lines_per_s_printed_meanwhile": rate, "lines_printed_meanwhile": printed,
        "app_cpu_pct_of_a_core": (cpu1 - cpu0) / (t1 - t0) * 100,
        "output_panel": {"frames_drawn": frames, "frames_that_showed_newer_lines": advanced,
                         "newest_line_shown_first_last": [newest0, newest1],
                         "lines_written_by_the_last_key": size1 // line},
        "limits_ms": {"bare_app_same_flood": bs, "bare_app_quiet": qs},
        "terminal": f"{UI_SIZE[0]}x{UI_SIZE[1]} pty; the app attached to a running dispatcher, observer and "
                    f"runner; {UI_ROWS + 1} commits",
    }
    title = f"a job printing {s.ui_lines_per_s:,} lines/s"
    return [
        Figure("control-center", f"control center: keypress -> repaint, p50 ({title})", "ms", st["p50"],
               "<= 100 ms", st["p50"] <= 100, spread=_ms_spread(st), limit=limit, stats=st, details=details),
        Figure("control-center", f"control center: keypress -> repaint, p99 ({title})", "ms", st["p99"],
               "<= 100 ms", st["p99"] <= 100, spread=f"max {st['max']:.1f}, n={st['n']}",
               limit=f"bare Textual app p99 {bs['p99']:.1f} ms (as above)", stats=st),
        Figure("control-center", f"control center: app RSS while {title}", "MiB", max(early_mib, late_mib),
               "bounded: the 2nd half's peak within 5% of the 1st half's", late_mib <= early_mib * 1.05,
               spread=f"{rss / 2**20:.0f} MiB at the first key; peak {early_mib:.0f} in the first half of the keys, "
                      f"{late_mib:.0f} in the second; {printed / 1e6:.1f} M lines printed meanwhile "
                      f"({rate / 1000:.0f}k lines/s)",
               limit=f"{rss / 2**20:.0f} MiB (its RSS at the first key)",
               stats={"at_first_key_mib": rss / 2**20, "peak_first_half_mib": early_mib,
                      "peak_second_half_mib": late_mib}),
    ]


def _first_frames(ctx: Context, name: str, argv: list[str], shown: Callable[[Frame], bool], starts: int,
                  what: str) -> tuple[list[float], list[float]]:
    """Seconds from starting the app on a pty to its first frame that draws anything, and to the first
    that ``shown`` accepts; ``q`` quits it after each start."""
    drawn, full = [], []
    for _ in range(starts):
        term = Terminal(ctx.procs, name, argv, UI_SIZE, env=_ui_env(ctx))
        try:
            first = term.wait(lambda f: f.plain().strip(), term.started, 60, "anything")
            done = first if shown(first) else term.wait(shown, first.at, 60, what)
        finally:
            term.close(b"q")
        drawn.append(first.at - term.started)
        full.append(done.at - term.started)
    return drawn, full


def _first_frame(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    repo = Repo(ctx.tmp / "cc-history-repo", toml("true", 30), files=10)
    history, _ = repo.fast_import(s.ui_history)
    repo.sync_worktree()
    _prefill(repo, history, 2)
    newest = f"bulk {s.ui_history - 1}"

    def populated(frame: Frame) -> bool:
        return newest in frame.plain()
    what = f"the newest of {s.ui_history} commits"
    argv = [PY, "-m", "tuici", str(repo.path)]
    warm = 0 if ctx.quick else 1  # the first start (new state, runner clones, cold caches) is a discarded warm-up
    cold_drawn, cold = _first_frames(ctx, "cc-cold", argv, populated, warm + s.ui_starts, what)
    cold_drawn, cold = cold_drawn[warm:], cold[warm:]
    leaks = _leftovers()
    cluster = _cluster(ctx, "cc-attach", repo, 0)
    try:
        attach_drawn, attach = _first_frames(ctx, "cc-attach-app", argv, populated, s.ui_starts, what)
    finally:
        cluster.stop()
    _, bare = _first_frames(ctx, "cc-bare-start", [PY, "-m", "bench._bare_app"],
                            lambda f: bare_app.READY in f.plain(), warm + s.ui_starts, "the bare app")
    bs = summarize(bare[warm:])
    imports = {"python -c pass": ctx.python_ms("pass"), "import textual.app": ctx.python_ms("import textual.app"),
               "import tuici.ui.app": ctx.python_ms("import tuici.ui.app")}
    limit = (f"bare Textual app's first frame {bs['p50']:.2f} s (python -c pass "
             f"{imports['python -c pass']['p50']:.0f} ms, "
             f"import textual.app {imports['import textual.app']['p50']:.0f} ms)")
    figures = []
    for how, full, drawn, extra in (
            ("`tuici` starting its engine", cold, cold_drawn, {"processes_left_after_quit": leaks}),
            ("`tuici` attaching to a running engine", attach, attach_drawn, {})):
        st, dr = summarize(full), summarize(drawn)
        figures.append(Figure(
            "control-center", f"control center: first frame, {s.ui_history:,} commits in history ({how})", "s",
            st["p50"], "<= 1 s", st["p50"] <= 1,
            spread=f"min {st['min']:.2f}, max {st['max']:.2f}, n={st['n']}; first frame of any kind {dr['p50']:.2f}",
            limit=limit, stats=st,
            details={"first_frame_of_any_kind_s": dr, "bare_app_first_frame_s": bs, "imports_ms": imports,
                     "terminal": f"{UI_SIZE[0]}x{UI_SIZE[1]} pty", **extra}))
    return figures


def control_center(ctx: Context) -> list[Figure]:
    """Keys answered while a job floods its output, and the first frame over a long history: the real
    `tuici` on a pty, next to a bare Textual app measured the same way in the same run."""
    return _keypress_under_flood(ctx) + _first_frame(ctx)


ROWS: dict[str, Callable[[Context], list[Figure]]] = {
    "commit-latency": commit_latency,
    "job-overhead": job_overhead,
    "environments": environments,
    "real-suite": real_suite,
    "backlog": backlog,
    "log-throughput": log_throughput,
    "idle": idle_cost,
    "startup": startup,
    "scale": scale,
    "control-center": control_center,
}

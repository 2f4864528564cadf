"""commit-latency: `git commit` to the test command's start, stage by stage."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

from .. import limits
from ..harness import Figure, Repo, summarize
from .common import Context, _cluster, _profiled, _warm_up, toml


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
        shas = [line.split()[0] for line in reversed(
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
        Figure("commit-latency", "commit -> test start, p50", "ms", st["p50"], "p50 <= 25 ms", st["p50"] <= 25,
               spread=f"min {st['min']:.1f}, max {st['max']:.1f}, n={st['n']}", limit=limit, stats=st,
               details=details),
        Figure("commit-latency", "commit -> test start, p99", "ms", st["p99"], "p99 <= 60 ms", st["p99"] <= 60,
               spread=f"n={st['n']} (p99 of {st['n']} samples ~ the max)", limit=f"{floor:.1f} ms (as above)",
               stats=st),
    ]


def _printed_stamp(log: Path) -> int:
    """The time a job's command printed (``date +%s%N``): the first line of its output that is a number."""
    return next(int(line) for line in log.read_text().splitlines() if line.isdigit())

"""job-overhead: what tuici adds to a job running `true`."""

from __future__ import annotations

import subprocess

from .. import limits
from ..harness import Figure, Repo, summarize
from .common import Context, _cluster, _ms_spread, _profiled, _spaced_jobs, _warm_up, toml


def job_overhead(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    repo = Repo(ctx.tmp / "overhead-repo", toml("true", 30), files=s.files)
    cluster = _cluster(ctx, "overhead", repo, s.runners)
    walls, durations, commit_to_done = [], [], []
    try:
        _warm_up(cluster, repo, s.runners)
        _profiled(ctx, "job-overhead", cluster, ["dispatcher", "r1"])
        for job, returned in _spaced_jobs(ctx, cluster, repo, timeout=60):
            walls.append((job.finished_at - job.started_at) * 1000)
            durations.append(job.duration_s * 1000)
            commit_to_done.append((job.finished_at - returned) * 1000)
        ctx.profiler.stop()
        shas = [sha for sha in reversed(subprocess.run(["git", "log", "--format=%H", "-12"], cwd=repo.path,
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
        "runner_prepare_and_delivery_ms (wall - duration)":
            summarize(w - d for w, d in zip(walls, durations, strict=True)),
        "commit_to_result_ms": summarize(commit_to_done),
        "limits_ms": {"sh_true_direct": true, "git_checkout_clean": g_co},
        "files": s.files,
    }
    return [Figure("job-overhead", "per-job overhead (`true`)", "ms", st["p50"], "median <= 20 ms",
                   st["p50"] <= 20, spread=_ms_spread(st),
                   limit=f"`sh -c true` direct {true['p50']:.1f} ms; git checkout/clean alone {g_co['p50']:.1f} ms",
                   stats=st, details=details)]

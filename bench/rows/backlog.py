"""backlog: hundreds of commits at once, through 2 and 4 runners."""

from __future__ import annotations

from .. import limits
from ..harness import Figure, Repo
from .common import Context, _cluster, _profiled, _warm_up, toml

TARGETS = {4: 100}  # jobs/s by runner count (issue 15: 4 runners); 40 for any other count (issue 5)


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
        target = TARGETS.get(n_runners, 40)
        figures.append(Figure(
            "backlog", f"backlog throughput, {n_runners} runners", "jobs/s", rate, f">= {target} jobs/s, none lost",
            rate >= target and lost == 0 and dupes == 0,
            spread=f"{passed}/{len(shas)} passed, {lost} lost, {dupes} duplicate, {retried} retried",
            limit=f"{limit_rate:.0f} jobs/s (git checkout/clean + `true` direct: {floor_ms:.1f} ms/job "
                  f"x {min(n_runners, limits.cores())} cores)",
            stats={"jobs_per_s": rate, "steady_jobs_per_s": (len(shas) - 1) / max(1e-9, last - first)},
            details={"commits": len(shas), "seconds_from_ref_update_to_last_result": last - made,
                     "first_assignment_after_ref_update_s": first - made, "jobs_per_runner": per_runner}))
    return figures

"""bisect: what a bisection costs, in jobs and seconds, over N commits pushed at once with `coalesce = true`.

Each round pushes N commits in one ref update (the first ``k`` of them good, the rest bad: state.txt), on top of a
commit that passed; only the tip gets a job, it fails, and a bisection tests midpoints until it names commit
``k + 1``. Then a good commit fixes the branch, and the next round starts from it. The test command is a shell
test of state.txt, so the seconds are tuici's own cost per job, one job after another.
"""

from __future__ import annotations

import math
import random

from .. import limits
from ..harness import BenchError, Figure, Repo, summarize, wait_for
from .common import Context, _cluster, _profiled, _warm_up, toml

COMMAND = "grep -qx good state.txt"


def bisect_cost(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    sizes = [int(x) for x in s.bisect_commits.split(",") if x.strip()]
    repo = Repo(ctx.tmp / "bisect-repo", toml(COMMAND, 30) + "coalesce = true\n", files=10,
                extra={"state.txt": "good\n"})
    cluster = _cluster(ctx, "bisect", repo, s.runners)
    rounds: dict[int, list[dict]] = {n: [] for n in sizes}
    rng = random.Random(12)  # the same regressions every run
    try:
        _warm_up(cluster, repo, s.runners)
        _profiled(ctx, "bisect", cluster, ["dispatcher"])
        for n in sizes:
            for r in range(s.bisect_rounds):
                first_bad = 11 if n == 16 and r == 0 else rng.randint(1, n)  # 1-based, among the n pushed
                rounds[n].append(_round(cluster, repo, n, first_bad))
                ctx.say(f"bisect: {n} commits, first bad {first_bad}: {rounds[n][-1]['jobs']} jobs, "
                        f"{rounds[n][-1]['seconds']:.2f} s")
        ctx.profiler.stop()
        shas, _ = repo.fast_import(12)
    finally:
        ctx.profiler.stop()
        cluster.stop()
    g_co = limits.git_checkout_ms(repo.path, shas, ctx.tmp)
    direct = limits.spawn_ms(COMMAND, repeats=10 if ctx.quick else 30, cwd=repo.path)
    per_job = g_co["p50"] + direct["p50"]
    figures = []
    for n, done in rounds.items():
        bound = math.ceil(math.log2(n))  # n - 1 untested commits between the passing one and the tip
        jobs = [d["jobs"] for d in done]
        seconds = summarize(d["seconds"] for d in done)
        right = all(d["found"] for d in done)
        detail = {"rounds": done, "bound_jobs": bound,
                  "limits_ms": {"git_checkout_clean": g_co, "command_direct": direct}}
        figures.append(Figure(
            "bisect", f"bisect of {n} commits pushed at once: jobs", "jobs", max(jobs),
            f"<= ceil(log2({n - 1} untested + 1)) = {bound}, found",
            max(jobs) <= bound and right,
            spread=f"jobs per round {jobs}; the first bad commit {'found' if right else 'NOT found'} in every round",
            limit=f"{bound} jobs (a binary search over {n} candidates)", details=detail))
        figures.append(Figure(
            "bisect", f"bisect of {n} commits pushed at once: tip failed -> first bad found", "s", seconds["p50"],
            "-", None,
            spread=f"min {seconds['min']:.2f}, max {seconds['max']:.2f}, n={seconds['n']}",
            limit=f"{max(jobs) * per_job / 1000:.2f} s = {max(jobs)} jobs x (git checkout/clean "
                  f"{g_co['p50']:.1f} + command direct {direct['p50']:.1f} ms)",
            stats=seconds))
    return figures


def _round(cluster, repo: Repo, n: int, first_bad: int) -> dict:
    """Push ``n`` commits at once, the ``first_bad``-th the first bad one; wait for the bisection to end, then
    fix the branch. What it cost."""
    states = ["good\n"] * (first_bad - 1) + ["bad\n"] * (n - first_bad + 1)
    shas, _ = repo.fast_import(n, extra=lambda i: {"state.txt": states[i]})
    known = len(cluster.status().bisections)

    def ended():
        bisections = cluster.status().bisections
        return bisections[known] if len(bisections) > known and bisections[known].state != "running" else None

    bisection = wait_for(ended, 60 + 5 * n, 0.1, f"the bisection of {n} commits")
    jobs = {j.id: j for j in cluster.status().jobs}
    tip = next(j for j in reversed(jobs.values()) if j.commit == shas[-1])
    if tip.state != "failed":
        raise BenchError(f"the tip's job ended {tip.state}")
    ended_at = max(jobs[j].finished_at for j in bisection.jobs) if bisection.jobs else tip.finished_at
    fix, _ = repo.fast_import(1, extra=lambda i: {"state.txt": "good\n"})
    cluster.wait_jobs(fix, timeout=60)
    return {"first_bad": first_bad, "found": bisection.state == "found" and bisection.first_bad == shas[first_bad - 1],
            "jobs": len(bisection.jobs), "seconds": ended_at - tip.finished_at}

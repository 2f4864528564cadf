"""scale: 50 runners registered and fed, and `tuici status --json` over a long history."""

from __future__ import annotations

import json
import subprocess
import time

from .. import limits
from ..harness import PY, BenchError, Cluster, Figure, Repo, summarize, wait_quiet
from .common import Context, _plain_env, _prefill, _profiled, toml


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
               stats=st, details={"status_request_in_process_ms": rp, "json_bytes": size,
                                  "waited_for_quiet_s": round(settled, 2),
                                  "history_note": "history pre-filled through tuici.store.Store for real commits"}),
    ]

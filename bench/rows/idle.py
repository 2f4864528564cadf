"""idle: the CPU an idle `tuici serve` (dispatcher, observer, runners) uses."""

from __future__ import annotations

import time

from ..harness import BenchError, Figure, Repo, cpu_seconds, summarize, wait_for
from .common import Context, _leftovers, _profiled_pids, _roles, _serve, toml


def idle_cost(ctx: Context) -> list[Figure]:
    from ..harness import Ctl

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
        for _ in range(windows):
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

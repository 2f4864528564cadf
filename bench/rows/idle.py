"""idle: the CPU an idle `tuici serve` uses, its whole process tree as `top` would count it (the supervisor, the
dispatcher, the observer, the runners and whatever they spawned: git helpers included)."""

from __future__ import annotations

import time

from ..harness import BenchError, Figure, Repo, summarize, tree_cpu_seconds, tree_wakeups, wait_for
from .common import Context, _leftovers, _profiled_pids, _roles, _serve, toml

TARGET_PCT = 0.2  # of one core, the whole tree (issue 15)


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
        windows = 6 if s.idle_seconds >= 6 else 2
        step = s.idle_seconds / windows
        _profiled_pids(ctx, "idle", roles)
        # Each role with what it spawned; the supervisor alone (its children are the roles).
        t0 = time.monotonic()
        base = last = tree_cpu_seconds([serve.pid])
        per0 = {name: tree_cpu_seconds([pid]) for name, pid in roles.items()}
        wakes0 = _wakes(serve.pid, roles)
        sup0 = base - sum(per0.values())
        win = []
        for _ in range(windows):
            time.sleep(step)
            now = tree_cpu_seconds([serve.pid])
            win.append((now - last) / step * 100)
            last = now
        end = tree_cpu_seconds([serve.pid])
        wall = time.monotonic() - t0
        total = (end - base) / wall * 100
        per1 = {name: tree_cpu_seconds([pid]) for name, pid in roles.items()}
        per = {name: round((per1[name] - per0[name]) / wall * 100, 3) for name in roles}
        per["supervisor"] = round(((end - sum(per1.values())) - sup0) / wall * 100, 3)
        wakes1 = _wakes(serve.pid, roles)
        wakes = {name: round((wakes1[name] - wakes0.get(name, 0)) / wall * 60, 1) for name in wakes1}
        ctx.profiler.stop()
    finally:
        ctx.profiler.stop()
        ctx.procs.stop(["idle-serve"], grace=20)
    leaks = _leftovers()
    ws = summarize(win)
    return [
        Figure("idle", f"idle cost: `tuici serve --runners {s.idle_runners}`, whole process tree, "
               f"{s.idle_seconds:.0f} s", "% of a core", total, f"<= {TARGET_PCT}% of one core, whole tree",
               total <= TARGET_PCT,
               spread=f"{windows} windows of {step:.0f} s: min {ws['min']:.2f}, max {ws['max']:.2f}",
               limit="0 (an idle process need not wake up)", stats=ws,
               note="supervisor, dispatcher, observer, runners and everything they spawned, as `top` counts them; "
                    f"CPU time comes in 10 ms clock ticks ({1 / s.idle_seconds:.3f}% over the window)",
               details={"per_process_pct": per, "wakeups_per_minute": wakes, "processes_left_after_stop": leaks}),
    ]


def _wakes(serve_pid: int, roles: dict[str, int]) -> dict[str, int]:
    """Times each role's processes (with what they spawned), and the supervisor's own, were put on a CPU."""
    counts = {name: sum(tree_wakeups([pid]).values()) for name, pid in roles.items()}
    counts["supervisor"] = tree_wakeups([serve_pid]).get(serve_pid, 0)
    return counts

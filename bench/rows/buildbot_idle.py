"""buildbot-idle: the CPU an idle Buildbot uses (the master and its workers, with everything below them, as `top`
would count it), told of commits by its change hook and by its GitPoller polling every second, over the window of
tuici's idle row, beside that row on the same sizes."""

from __future__ import annotations

import time

from ..buildbot import Buildbot
from ..harness import Figure, Repo, summarize, tree_cpu_seconds
from .beside import compared, installed, tuici_side, versions, warm_up
from .common import Context, toml
from .idle import idle_cost

SOURCES = {"hook": "change hook, web server on", "poller": "GitPoller, 1 s"}


def buildbot_idle(ctx: Context) -> list[Figure]:
    bb = installed(ctx)
    s = ctx.sizes
    tuici = tuici_side(ctx, "buildbot-idle", idle_cost, idle_runners=s.bb_workers)[0]
    figures = []
    for source, label in SOURCES.items():
        tag = f"bb-idle-{source}"
        repo = Repo(ctx.tmp / f"{tag}-repo", toml("true", 30), files=10)
        bot = Buildbot(bb, ctx.procs, ctx.dir(tag), tag, repo.path, s.bb_workers, "true", source)
        try:
            bot.start()
            warm_up(bot, repo)  # as tuici's row waits for its first job: every worker has its clone
            time.sleep(0.5 if ctx.quick else 2.0)  # let start-up work settle
            pids = bot.pids()
            windows = 6 if s.idle_seconds >= 6 else 2
            step = s.idle_seconds / windows
            t0 = time.monotonic()
            base = last = tree_cpu_seconds(pids)
            win = []
            for _ in range(windows):
                time.sleep(step)
                now = tree_cpu_seconds(pids)
                win.append((now - last) / step * 100)
                last = now
            total = (tree_cpu_seconds(pids) - base) / (time.monotonic() - t0) * 100
            per = {name: round(tree_cpu_seconds([ctx.procs.procs[name].pid]), 3) for name in bot.names}
            bot.check_alive()
        finally:
            bot.stop()
        ws = summarize(win)
        figures.append(compared(
            "buildbot-idle", f"Buildbot ({label}): idle, master + {s.bb_workers} workers, {s.idle_seconds:.0f} s",
            "% of a core", total, tuici,
            f"{windows} windows of {step:.0f} s: min {ws['min']:.2f}, max {ws['max']:.2f}", stats=ws,
            details={"cpu_seconds_since_start": per, "tuici": tuici.details.get("per_process_pct"),
                     "versions": versions(bb)}))
    return figures

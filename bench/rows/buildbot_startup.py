"""buildbot-startup: a Buildbot master and its workers to all connected, and their stop, beside tuici's start-up
row on the same sizes. The master is started first and the workers once its log says it is running, as
`buildbot start` waits for it (workers started before would wait out their reconnection delay)."""

from __future__ import annotations

import time

from ..buildbot import Buildbot
from ..harness import Figure, Repo, summarize
from .beside import compared, installed, tuici_side, versions
from .common import Context, _leftovers, toml
from .startup import startup


def buildbot_startup(ctx: Context) -> list[Figure]:
    bb = installed(ctx)
    s = ctx.sizes
    tuici, tuici_stop = tuici_side(ctx, "buildbot-startup", startup, startup_runners=s.bb_workers)[:2]
    tag = "bb-startup"
    repo = Repo(ctx.tmp / f"{tag}-repo", toml("true", 30), files=10)
    bot = Buildbot(bb, ctx.procs, ctx.dir(tag), tag, repo.path, s.bb_workers, "true", "hook")
    times, running, stops, leaks = [], [], [], 0
    warm = 0 if ctx.quick else 1  # as tuici's row: the first start (new database, cold caches) is a warm-up
    for r in range(s.startup_repeats + warm):
        t0 = time.time()
        try:
            up = bot.start_master()
            bot.start_workers()
            connected = bot.wait_connected(since=t0)
        finally:
            t_stop = time.monotonic()
            bot.stop()
            stop_s = time.monotonic() - t_stop
        leaks += _leftovers()
        if r < warm:
            continue
        times.append(connected - t0)
        running.append(up - t0)
        stops.append(stop_s)
        ctx.say(f"buildbot-startup: {times[-1]:.2f} s to {s.bb_workers} workers connected; stop {stop_s:.2f} s")
    st, sp = summarize(times), summarize(stops)
    return [
        compared("buildbot-startup", f"Buildbot: start-up, master + {s.bb_workers} workers to all connected", "s",
                 st["p50"], tuici, f"min {st['min']:.2f}, max {st['max']:.2f}, n={st['n']}", stats=st,
                 details={"master_running_s": summarize(running), "tuici_s": tuici.stats, "versions": versions(bb)}),
        compared("buildbot-startup", "Buildbot: stop, SIGTERM to every process exited", "s", sp["p50"], tuici_stop,
                 f"{leaks} processes left behind", limit="-", stats=sp),
    ]

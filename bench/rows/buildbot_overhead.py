"""buildbot-overhead: what Buildbot adds to a build running `true` after its git checkout, beside tuici's
job-overhead row on the same sizes."""

from __future__ import annotations

from ..buildbot import Buildbot
from ..harness import Figure, Repo, summarize
from .beside import by_revision, compared, installed, spaced, tuici_side, versions, warm_up
from .common import Context, _ms_spread, toml
from .job_overhead import job_overhead


def buildbot_overhead(ctx: Context) -> list[Figure]:
    bb = installed(ctx)
    s = ctx.sizes
    (tuici,) = tuici_side(ctx, "buildbot-overhead", job_overhead, overhead_jobs=s.bb_commits)
    tag = "bb-overhead"
    repo = Repo(ctx.tmp / f"{tag}-repo", toml("true", 30), files=s.files)
    bot = Buildbot(bb, ctx.procs, ctx.dir(tag), tag, repo.path, s.runners, "true", "hook")
    try:
        bot.start()
        warm_up(bot, repo)
        made = spaced(bot, repo, s.bb_commits, s.gap)
    finally:
        bot.stop()
    builds = by_revision(bot, [sha for sha, _ in made])
    ids = {b["revision"]: bid for bid, b in bot.builds().items()}
    commands = bot.command_seconds()
    true = ctx.true_ms()
    # As tuici's row: from the build's start (a worker assigned) to its end recorded, less `sh -c true` run directly.
    walls = [(builds[sha]["finished"] - builds[sha]["started"]) * 1000 for sha, _ in made]
    st = summarize(w - true["p50"] for w in walls)
    details = {"build_wall_ms (master: build started -> finished)": summarize(walls),
               "commands_ms (the worker's elapsedTime of each git command and `true`, summed per build)":
                   summarize(commands.get(ids[sha], 0.0) * 1000 for sha, _ in made),
               "commit_to_result_ms": summarize((builds[sha]["finished"] - returned) * 1000 for sha, returned in made),
               "limits_ms": {"sh_true_direct": true}, "tuici_ms": tuici.stats, "workers": s.runners,
               "files": s.files, "versions": versions(bb)}
    return [compared("buildbot-overhead", "Buildbot: per-build overhead (`true`, Git step)", "ms", st["p50"], tuici,
                     _ms_spread(st), stats=st, details=details)]

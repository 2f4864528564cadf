"""buildbot-latency: `git commit` to the test command's start in Buildbot, told by its change hook (from a git
post-commit hook) and by its GitPoller polling every second, beside tuici's commit-latency row on the same sizes."""

from __future__ import annotations

import shlex

from ..buildbot import Buildbot, Source
from ..harness import Figure, Repo, summarize
from .beside import by_revision, compared, installed, spaced, tuici_side, versions, warm_up
from .commit_latency import commit_latency
from .common import Context, toml

SOURCES: dict[Source, str] = {"hook": "change hook", "poller": "GitPoller, 1 s"}


def buildbot_latency(ctx: Context) -> list[Figure]:
    bb = installed(ctx)
    s = ctx.sizes
    p50, p99 = tuici_side(ctx, "buildbot-latency", commit_latency, latency_commits=s.bb_commits)[:2]
    figures = []
    for source, label in SOURCES.items():
        tag = f"bb-latency-{source}"
        stamps = ctx.dir(f"{tag}-stamps")
        # As tuici's row: the same repository, the command `date`, which writes when it started (to a file named
        # after the commit: Buildbot's workers run unsandboxed, and its logs are in its database).
        repo = Repo(ctx.tmp / f"{tag}-repo", toml("date +%s%N", 30), files=s.files)
        bot = Buildbot(bb, ctx.procs, ctx.dir(tag), tag, repo.path, s.runners,
                       f"date +%%s%%N > {shlex.quote(str(stamps))}/%(prop:got_revision)s", source)
        try:
            bot.start()
            warm_up(bot, repo)
            made = spaced(bot, repo, s.bb_commits, s.gap)
            ctx.say(f"buildbot-latency: {label}: {len(made)} builds")
        finally:
            bot.stop()
        builds = by_revision(bot, [sha for sha, _ in made])
        changes = bot.changes()
        samples, heard, scheduled, prepared = [], [], [], []
        for sha, returned in made:
            started = int((stamps / sha).read_text()) / 1e9
            build = builds[sha]
            samples.append((started - returned) * 1000)
            heard.append((changes[sha] - returned) * 1000)
            scheduled.append((build["started"] - changes[sha]) * 1000)
            prepared.append((started - build["started"]) * 1000)
        st = summarize(samples)
        details = {"stages_ms": {f"commit -> change recorded ({label})": summarize(heard),
                                 "change -> build started (scheduler, build request claimed, worker)":
                                     summarize(scheduled),
                                 "build started -> command started (Git step: clean, fetch, checkout)":
                                     summarize(prepared)},
                   "tuici_ms": p50.stats, "workers": s.runners, "files": s.files, "versions": versions(bb)}
        spread = f"min {st['min']:.0f}, max {st['max']:.0f}, n={st['n']}"
        figures += [
            compared("buildbot-latency", f"Buildbot ({label}): commit -> test start, p50", "ms", st["p50"], p50,
                     spread, stats=st, details=details),
            compared("buildbot-latency", f"Buildbot ({label}): commit -> test start, p99", "ms", st["p99"], p99,
                     f"n={st['n']} (p99 of {st['n']} samples ~ the max)", stats=st),
        ]
    return figures

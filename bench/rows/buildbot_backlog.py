"""buildbot-backlog: commits made at once (one ref update) through Buildbot's workers, beside tuici's backlog row
on the same sizes. Buildbot hears of them as from a push: the repository's post-receive hook posts each new commit
to its change hook (its GitPoller, the other way, took 50 s to record 100 commits on a loaded 2-core machine)."""

from __future__ import annotations

from ..buildbot import SUCCESS, Buildbot
from ..harness import Figure, Repo
from .backlog import backlog
from .beside import by_revision, compared, duplicates, installed, tuici_side, versions, warm_up
from .common import Context, toml


def buildbot_backlog(ctx: Context) -> list[Figure]:
    bb = installed(ctx)
    s = ctx.sizes
    (tuici,) = tuici_side(ctx, "buildbot-backlog", backlog, backlog_commits=s.bb_backlog,
                          backlog_runners=str(s.bb_workers))
    tag = "bb-backlog"
    repo = Repo(ctx.tmp / f"{tag}-repo", toml("true", 30), files=10)
    bot = Buildbot(bb, ctx.procs, ctx.dir(tag), tag, repo.path, s.bb_workers, "true", "hook")
    try:
        bot.start()
        warm_up(bot, repo)
        before, old = len(bot.events("builds.finished")), repo.head()
        shas, made = repo.fast_import(s.bb_backlog)
        bot.pushed(old, shas[-1])
        bot.wait_finished(before + len(shas), timeout=max(120.0, 3.0 * len(shas)), interval=0.2)
    finally:
        bot.stop()
    builds = by_revision(bot, shas)
    changes = bot.changes()
    last = max(b["finished"] for b in builds.values())
    first = min(b["started"] for b in builds.values())
    rate = len(shas) / (last - made)
    passed = sum(1 for b in builds.values() if b["results"] == SUCCESS)
    lost, dupes = len(shas) - passed, duplicates(bot, shas)
    per_worker: dict[str, int] = {}
    for b in builds.values():
        per_worker[f"worker {b['worker']}"] = per_worker.get(f"worker {b['worker']}", 0) + 1
    ctx.say(f"buildbot-backlog: {rate:.1f} builds/s, {passed}/{len(shas)} passed (tuici {tuici.value:.1f} jobs/s)")
    return [compared(
        "buildbot-backlog", f"Buildbot: backlog throughput, {s.bb_workers} workers", "jobs/s", rate, tuici,
        f"{passed}/{len(shas)} passed, {lost} lost, {dupes} duplicate",
        stats={"jobs_per_s": rate, "steady_jobs_per_s": (len(shas) - 1) / max(1e-9, last - first)},
        details={"commits": len(shas), "seconds_from_ref_update_to_last_result": last - made,
                 "first_build_started_after_ref_update_s": first - made,
                 "all_changes_posted_after_ref_update_s": max(changes[sha] for sha in shas) - made,
                 "builds_per_worker": per_worker, "tuici": tuici.spread, "versions": versions(bb)})]

"""What the Buildbot rows share (issue 15): Buildbot's installation (once per run, or the reason it cannot be had),
tuici's side of a comparison measured by tuici's own row on the same sizes, Buildbot's warm-up and spaced-out
commits, and the figure that holds both systems' numbers.

Each Buildbot row first makes sure Buildbot is there (so that a machine without it skips the row at once), then
measures tuici on the workload, then Buildbot on the same one: the two minutes apart on the same machine."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import Any, Callable

from ..buildbot import Buildbot, Install, install
from ..harness import BenchError, Figure, Repo, RowSkipped
from .common import Context


def installed(ctx: Context) -> Install:
    """Buildbot's virtualenv, installed on the first call of the run; ``RowSkipped`` where it cannot be."""
    if "buildbot" not in ctx.cache:
        try:
            ctx.cache["buildbot"] = install(ctx.say)
        except RowSkipped as exc:
            ctx.cache["buildbot"] = exc
    got = ctx.cache["buildbot"]
    if isinstance(got, RowSkipped):
        raise got
    return got


def tuici_side(ctx: Context, name: str, row: Callable[[Context], list[Figure]], **sizes: Any) -> list[Figure]:
    """tuici's figures on a comparison's workload: tuici's own row, run on these sizes in a temp dir of its own."""
    ctx.say(f"{name}: tuici's side ({row.__name__} with {sizes})")
    sub = replace(ctx, sizes=replace(ctx.sizes, **sizes), tmp=ctx.dir(f"tuici-{name}"))
    figures = row(sub)
    for f in figures:
        if f.error or f.value is None:
            raise BenchError(f"tuici's side could not be measured: {f.figure}: {f.error or f.note}")
    return figures


def compared(row: str, figure: str, unit: str, value: float, tuici: Figure | float, spread: str, **kw: Any) -> Figure:
    """Buildbot's figure with tuici's on the same workload; the physical limit is that of tuici's row."""
    theirs = tuici if isinstance(tuici, (int, float)) else tuici.value
    kw.setdefault("limit", "" if isinstance(tuici, (int, float)) else tuici.limit)
    return Figure(row, figure, unit, value, "-", None, spread=spread, tuici=theirs, **kw)


def versions(bb: Install) -> dict[str, str]:
    wanted = ("buildbot", "buildbot-worker", "buildbot-www", "twisted", "sqlalchemy")
    return {k: v for k, v in bb.versions.items() if k.lower() in wanted}


def warm_up(bot: Buildbot, repo: Repo, timeout: float = 120.0) -> None:
    """Commits, one at a time, until every worker has run a build (so that each has its clone before anything
    is timed; Buildbot picks a free worker at random). For the change hook, the tip's build comes first."""
    if bot.source == "hook":
        bot.notify()
        bot.wait_finished(1, timeout)
    for _ in range(8 * len(bot.workers)):
        worked = {e["workerid"] for e in bot.events("builds.new")}
        if len(worked) >= len(bot.workers):
            return
        count = len(bot.events("builds.finished")) + 1
        repo.commit()
        bot.wait_finished(count, timeout)
    raise BenchError(f"{bot.tag}: not every worker got a build during the warm-up")


def spaced(bot: Buildbot, repo: Repo, commits: int, gap: float, timeout: float = 120.0) -> list[tuple[str, float]]:
    """``commits`` commits, each made once the previous build has finished and ``gap`` s (plus up to 0.1 s of
    jitter) have passed, as tuici's spaced-out rows make them: (sha, the wall time `git commit` returned) each."""
    made = []
    for _ in range(commits):
        count = len(bot.events("builds.finished")) + 1
        sha, returned = repo.commit()
        time.sleep(0.05)
        bot.wait_finished(count, timeout)
        made.append((sha, returned))
        time.sleep(gap + random.uniform(0, 0.1))
    return made


def by_revision(bot: Buildbot, shas: list[str]) -> dict[str, dict[str, Any]]:
    """The build of each commit in ``shas``; every one must have exactly one."""
    builds: dict[str, list[dict[str, Any]]] = {}
    for build in bot.builds().values():
        builds.setdefault(build["revision"], []).append(build)
    missing = [sha for sha in shas if sha not in builds]
    if missing:
        raise BenchError(f"{bot.tag}: {len(missing)} of {len(shas)} commits have no build")
    return {sha: builds[sha][-1] for sha in shas}


def duplicates(bot: Buildbot, shas: list[str]) -> int:
    """Builds beyond one per commit of ``shas``."""
    want = set(shas)
    return sum(1 for b in bot.builds().values() if b["revision"] in want) - len(want)

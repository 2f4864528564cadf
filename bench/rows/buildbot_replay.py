"""buildbot-replay: a generated history replayed into tuici and into Buildbot, a commit merged a second, with the
same number of runners and workers: merge -> result, and the time until every commit has its verdict.

The history is a small Python project whose pytest suite takes a few seconds (real-suite's generated modules, plus a
module of code and its tests); each commit adds a function and its test, and a few add a wrong test that the next
commit mends, so that both systems must also agree on which commits fail."""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass

from ..buildbot import Buildbot, Install
from ..harness import PY, BenchError, Cluster, Figure, Repo, git, percentile, summarize, wait_for
from .beside import by_revision, compared, installed, versions
from .common import Context, _serve, toml
from .real_suite import _suite_files

COMMAND = f"{shlex.quote(PY)} -m pytest -q -p no:cacheprovider"
ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # the project's own plugins only, as in real-suite


def _breaks(i: int) -> bool:
    """Whether commit ``i`` (from 1) adds a wrong test (the next one mends it)."""
    return i % 10 == 3


def _project(i: int) -> dict[str, str]:
    """The changing part of the project after commit ``i``: ``calc/ops.py`` and its tests."""
    ops = ['"""Operations, one added per commit."""\n']
    tests = ["from calc import ops\n"]
    for k in range(1, i + 1):
        ops.append(f"\n\ndef f{k}(x):\n    return x * {k} + {k % 7}\n")
        expected = 2 * k + k % 7 + (1 if k == i and _breaks(k) else 0)
        tests.append(f"\n\ndef test_f{k}():\n    assert ops.f{k}(2) == {expected}\n")
    return {"calc/ops.py": "".join(ops), "tests/test_ops.py": "".join(tests)}


def _history(ctx: Context, tag: str, commits: int) -> tuple[Repo, list[str]]:
    """A repository on its first commit, with ``commits`` more (not on any branch) to merge into main."""
    config = (toml(COMMAND, 300) + 'env = { PYTEST_DISABLE_PLUGIN_AUTOLOAD = "1" }\nbranches = ["main"]\n')
    extra = {**_suite_files(ctx.sizes.bb_replay_suite), "calc/__init__.py": "", **_project(0)}
    repo = Repo(ctx.tmp / f"{tag}-repo", config, files=0, extra=extra)
    git(repo.path, "checkout", "-q", "--detach")
    shas = [repo.commit(_project(i))[0] for i in range(1, commits + 1)]
    git(repo.path, "update-ref", "refs/replay/tip", shas[-1])
    git(repo.path, "checkout", "-q", "main")
    return repo, shas


def _replay(repo: Repo, shas: list[str]) -> dict[str, float]:
    """Fast-forward main one commit a second; sha -> the wall time its `git merge` returned."""
    start = time.monotonic()
    merged = {}
    for i, sha in enumerate(shas):
        time.sleep(max(0.0, start + i - time.monotonic()))
        res = subprocess.run(["git", "merge", "-q", "--ff-only", sha], cwd=repo.path, stdin=subprocess.DEVNULL,
                             capture_output=True)
        merged[sha] = time.time()
        if res.returncode != 0:
            raise BenchError(f"git merge failed: {res.stderr.decode(errors='replace').strip()}")
    return merged


@dataclass
class Replayed:
    """One system's replay: each commit's merge time, result time and verdict."""

    shas: list[str]
    merged: dict[str, float]  # sha -> the wall time its `git merge` returned
    results: dict[str, tuple[float, str]]  # sha -> (the time its result was recorded, its verdict)

    def waits(self) -> list[float]:
        return [self.results[sha][0] - self.merged[sha] for sha in self.shas]

    def done(self) -> float:
        """The time the last commit got its verdict."""
        return max(at for at, _ in self.results.values())

    def wrong(self, expected: list[str]) -> list[int]:
        """The commits (numbered from 1) whose verdict is not the generated one."""
        return [i + 1 for i, (sha, want) in enumerate(zip(self.shas, expected, strict=True))
                if self.results[sha][1] != want]


def _tuici(ctx: Context, commits: int) -> Replayed:
    """The replay through `tuici serve --runners N`."""
    repo, shas = _history(ctx, "replay-tuici", commits)
    _serve(ctx, "replay-serve", repo, ctx.sizes.bb_workers)
    # serve's components, watched through the dispatcher's control socket as the other rows watch theirs
    cluster = Cluster(ctx.procs, repo, ctx.dir("replay-tuici-work"), "replay")
    try:
        wait_for(lambda: ctx.procs.check_alive("replay-serve") or (repo.state_path / "address").exists(), 60,
                 0.05, "serve's dispatcher")
        cluster.wait_runners(ctx.sizes.bb_workers)
        cluster.wait_jobs([repo.head()], timeout=300)
        merged = _replay(repo, shas)
        jobs = cluster.wait_jobs(shas, timeout=60 + 10 * len(shas) * ctx.sizes.bb_replay_suite, interval=0.2)
        ctx.procs.check_alive("replay-serve")
    finally:
        cluster.stop()
        ctx.procs.stop(["replay-serve"], grace=20)
    return Replayed(shas, merged, {sha: (j.finished_at, j.state) for sha, j in jobs.items()})


def _buildbot(ctx: Context, bb: Install, commits: int) -> Replayed:
    """The same replay through Buildbot, told by its change hook from git's post-merge hook."""
    repo, shas = _history(ctx, "replay-bb", commits)
    bot = Buildbot(bb, ctx.procs, ctx.dir("bb-replay"), "bb-replay", repo.path, ctx.sizes.bb_workers, COMMAND,
                   "hook", env=ENV)
    try:
        bot.start()
        bot.notify()  # as tuici tests the tip it finds: the first commit's build, before the replay
        bot.wait_finished(1, 300)
        merged = _replay(repo, shas)
        bot.wait_finished(1 + len(shas), timeout=60 + 10 * len(shas) * ctx.sizes.bb_replay_suite, interval=0.2)
    finally:
        bot.stop()
    builds = by_revision(bot, shas)
    return Replayed(shas, merged, {sha: (b["finished"], b["verdict"]) for sha, b in builds.items()})


def buildbot_replay(ctx: Context) -> list[Figure]:
    bb = installed(ctx)
    s = ctx.sizes
    n, w = s.bb_replay, s.bb_workers
    t, b = _tuici(ctx, n), _buildbot(ctx, bb, n)
    expected = ["failed" if _breaks(i) else "passed" for i in range(1, n + 1)]
    tw, bw = t.waits(), b.waits()
    verdicts = (f"verdicts as generated: Buildbot {n - len(b.wrong(expected))}/{n}, "
                f"tuici {n - len(t.wrong(expected))}/{n}")
    details = {"merge_to_result_s": {"tuici": summarize(tw), "Buildbot": summarize(bw)},
               "after_the_last_merge_s": {"tuici": t.done() - t.merged[t.shas[-1]],
                                          "Buildbot": b.done() - b.merged[b.shas[-1]]},
               "wrong_verdicts": {"tuici": t.wrong(expected), "Buildbot": b.wrong(expected)},
               "failing_commits_generated": [i for i in range(1, n + 1) if _breaks(i)],
               "runners_and_workers": w, "suite_seconds_aimed_at": s.bb_replay_suite, "versions": versions(bb)}
    what = f"replay of {n} commits merged 1/s, {w} workers"
    suite = f"one suite run (~{s.bb_replay_suite:g} s aimed at)"
    return [
        compared("buildbot-replay", f"Buildbot: {what}: merge -> result, p50", "s", percentile(bw, 50),
                 percentile(tw, 50), verdicts, limit=suite, stats=summarize(bw), details=details),
        compared("buildbot-replay", f"Buildbot: {what}: merge -> result, p90", "s", percentile(bw, 90),
                 percentile(tw, 90), verdicts, limit=suite),
        compared("buildbot-replay", f"Buildbot: {what}: first merge -> every verdict", "s",
                 b.done() - b.merged[b.shas[0]], t.done() - t.merged[t.shas[0]],
                 f"after the last merge: Buildbot {details['after_the_last_merge_s']['Buildbot']:.1f} s, "
                 f"tuici {details['after_the_last_merge_s']['tuici']:.1f} s", limit=f"{n - 1} s of merges + {suite}"),
    ]

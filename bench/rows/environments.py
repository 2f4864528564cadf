"""environments: what the sandbox and `setup` environments cost a job."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from .. import limits
from ..harness import BenchError, Figure, Repo, make_wheel, summarize
from .common import Context, _cluster, _spaced_jobs, _warm_up, toml

COLD_DEPENDENCIES = "six idna iniconfig packaging pluggy"


def _job_walls(ctx: Context, tag: str, config: str, runner_args: tuple[str, ...] = ()) -> list[float]:
    """Wall time (assigned -> result recorded) of spaced-out jobs with ``config``, after a warm-up job."""
    s = ctx.sizes
    repo = Repo(ctx.tmp / f"{tag}-repo", config, files=s.files)
    cluster = _cluster(ctx, tag, repo, 1, runner_args=runner_args)
    try:
        _warm_up(cluster, repo, 1)
        walls = [(job.finished_at - job.started_at) * 1000
                 for job, _ in _spaced_jobs(ctx, cluster, repo, timeout=120, what=f"{tag}: ")]
    finally:
        cluster.stop()
    return walls


def environments(ctx: Context) -> list[Figure]:
    """What the sandbox and `setup` environments cost a job: the same `true` jobs without the sandbox, in it,
    and in it with a reused environment; bubblewrap alone with and without a PID namespace; and one cold
    environment (an empty package cache) installing five dependencies from the package index."""
    from tuici.runner.sandbox import Sandbox, find_bwrap, probe

    bwrap = find_bwrap()
    problem = probe(bwrap)
    if problem is not None:
        raise BenchError(f"no sandbox on this machine: {problem}")
    off = summarize(_job_walls(ctx, "env-off", toml("true", 30), ("--sandbox", "off")))
    on = summarize(_job_walls(ctx, "env-on", toml("true", 30), ("--sandbox", "on")))
    reused = summarize(_job_walls(ctx, "env-reused", 'setup = "true"\n' + toml("true", 30), ("--sandbox", "on")))
    # The PID namespace alone: bwrap's own cost with and without it, on the sandbox tuici builds.
    base = Sandbox(fresh_tmp=ctx.dir("bwrap-tmp")).argv(["true"], "/", bwrap)
    without_pid = [a for a in base if a != "--unshare-pid"]
    without_pid[without_pid.index("--proc"):without_pid.index("--proc") + 2] = []
    repeats = 10 if ctx.quick else 40
    with_ns = limits.argv_ms(base, repeats)
    without_ns = limits.argv_ms(without_pid, repeats)
    pid_ns = with_ns["p50"] - without_ns["p50"]
    # A cold environment: a new branch's first job, with an empty package cache, five dependencies (from the
    # package index; --quick: wheels made here, so that the smoke test needs no network).
    names = COLD_DEPENDENCIES.split()
    # Outside /tmp, which the job's sandbox replaces with its own.
    wheels = Path(tempfile.mkdtemp(prefix="tuici-bench-wheels-", dir="/var/tmp"))
    try:
        if ctx.quick:
            requirements = " ".join(str(make_wheel(wheels, f"bench_{name}", "1.0", "VALUE = 1\n")) for name in names)
        else:
            requirements = COLD_DEPENDENCIES
        repo = Repo(ctx.tmp / "env-cold-repo", f'setup = "pip install {requirements}"\n' + toml("true", 300),
                    files=10)
        cluster = _cluster(ctx, "env-cold", repo, 1, runner_args=("--sandbox", "on"))
        try:
            job = cluster.wait_jobs([repo.head()], timeout=300)[repo.head()]
            log = (repo.state_path / "logs" / "jobs" / f"{job.id}.log").read_text(errors="replace")
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
    setup_s = re.search(r"── setup passed in ([0-9.]+) s ──", log)
    cold_note = "" if setup_s else f"job {job.state}: {job.error or log[-300:]}"
    sandbox_cost = on["p50"] - off["p50"]
    reuse_cost = reused["p50"] - on["p50"]
    details = {"job_wall_ms": {"sandbox off": off, "sandbox on": on, "sandbox on, environment reused": reused},
               "bwrap_ms": {"with PID namespace": with_ns, "without": without_ns}, "cold_log_tail": log[-2000:]}
    return [
        Figure("environments", "sandbox per job (on - off)", "ms", sandbox_cost, "-", None,
               spread=f"on p50 {on['p50']:.1f}, off p50 {off['p50']:.1f}, n={on['n']}",
               limit=f"bwrap alone {with_ns['p50']:.1f} ms per command", stats=on, details=details),
        Figure("environments", "PID namespace per job", "ms", pid_ns, "<= 5 ms", pid_ns <= 5,
               spread=f"bwrap {with_ns['p50']:.2f} vs {without_ns['p50']:.2f} ms without, n={with_ns['n']}",
               limit="0", stats=with_ns),
        Figure("environments", "environment reuse per job", "ms", reuse_cost, "<= 30 ms", reuse_cost <= 30,
               spread=f"reused p50 {reused['p50']:.1f}, no setup p50 {on['p50']:.1f}, n={reused['n']}",
               limit="0", stats=reused),
        Figure("environments", f"cold uv environment, {len(names)} dependencies", "s",
               float(setup_s.group(1)) if setup_s else None, "-", None, note=cold_note,
               spread="one job, empty cache; " + ("local wheels (--quick)" if ctx.quick else "from the index"),
               limit="-", error="" if setup_s else cold_note),
    ]

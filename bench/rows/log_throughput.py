"""log-throughput: a job printing hundreds of MB, and the dispatcher's memory meanwhile."""

from __future__ import annotations

import psutil

from .. import limits
from ..harness import BenchError, Figure, Repo, RssSampler, summarize
from .common import Context, _cluster, _profiled, _warm_up, toml

LOG_LINE = "tuici log throughput line: the quick brown fox jumps over the lazy dog 0123456789"


def log_throughput(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    total = s.log_mb * 1_000_000
    command = f"yes '{LOG_LINE}' | head -c {total}"
    repo = Repo(ctx.tmp / "log-repo", toml("true", 30), files=10)
    cluster = _cluster(ctx, "log", repo, 1)
    rates, peaks, runner_peaks = [], [], []
    try:
        _warm_up(cluster, repo, 1)
        disp = psutil.Process(cluster.pid("dispatcher"))
        baseline = disp.memory_info().rss
        _profiled(ctx, "log-throughput", cluster, ["dispatcher", "r1"])
        for i in range(s.log_repeats):
            with RssSampler({"dispatcher": cluster.pid("dispatcher"), "runner": cluster.pid("r1")}) as rss:
                sha, _ = repo.commit(files={"tuici.toml": toml(command, 600)} if i == 0 else None)
                job = cluster.wait_jobs([sha], timeout=600, interval=0.2)[sha]
            if job.state != "passed":
                raise BenchError(f"log job {job.id} ended {job.state}: {job.error}")
            stored = repo.state_path / "logs" / "jobs" / f"{job.id}.log"
            size = stored.stat().st_size
            if size < total or size != job.log_size:
                raise BenchError(f"stored log has {size} bytes, job says {job.log_size}, expected >= {total}")
            stored.unlink()
            rates.append(size / 1e6 / (job.finished_at - job.started_at))
            peaks.append(rss.peak["dispatcher"] / 2**20)
            runner_peaks.append(rss.peak["runner"] / 2**20)
            ctx.say(f"log-throughput: {rates[-1]:.0f} MB/s, dispatcher peak RSS {peaks[-1]:.0f} MiB")
        ctx.profiler.stop()
    finally:
        ctx.profiler.stop()
        cluster.stop()
    direct = limits.direct_write_mbps(command, total, ctx.tmp / "direct.log")
    sock = limits.socket_throughput(ctx.procs, total, ctx.tmp / "sock.log")
    st, pk = summarize(rates), summarize(peaks)
    return [
        Figure("log-throughput", f"log throughput ({s.log_mb} MB job)", "MB/s", st["p50"], ">= 150 MB/s",
               st["p50"] >= 150, spread=f"min {st['min']:.0f}, max {st['max']:.0f}, n={st['n']}",
               limit=f"command direct to a file {direct:.0f} MB/s; raw socket to a file {sock:.0f} MB/s",
               stats=st, details={"direct_mbps": direct, "socket_mbps": sock,
                                  "runner_peak_rss_mib": summarize(runner_peaks)}),
        Figure("log-throughput", "dispatcher peak RSS during it", "MiB", pk["max"], "< 100 MB", pk["max"] < 100,
               spread=f"baseline {baseline / 2**20:.0f} MiB before the job", stats=pk,
               limit=f"{baseline / 2**20:.0f} MiB (its RSS before the job)"),
    ]

"""Physical limits, measured in the same run as the figures they bound: the command run
directly, git alone, a raw socket between two processes, a bare interpreter start."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .harness import PY, BenchError, Procs, git, summarize, timed_run


def _peer(procs: Procs, name: str, mode: str, path: Path, *args: str) -> socket.socket:
    """A socket connected to ``python -m bench._peer MODE`` listening at ``path`` (a Unix socket, as tuici's)."""
    proc = procs.spawn(name, [PY, "-m", "bench._peer", mode, str(path), *args], stdout=subprocess.PIPE)
    if proc.stdout.readline().strip() != b"ready":
        raise BenchError(f"{name} did not start")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(path))
    return sock


def socket_rtt(procs: Procs, path: Path, rounds: int = 2000, size: int = 64) -> dict[str, float]:
    """Round trip of ``size`` bytes over a Unix socket (at ``path``) to another process, in milliseconds."""
    try:
        sock = _peer(procs, "limit-echo", "echo", path)
        msg = b"x" * size
        samples = []
        for i in range(rounds + 50):
            t0 = time.perf_counter()
            sock.sendall(msg)
            got = 0
            while got < size:
                chunk = sock.recv(size - got)
                if not chunk:
                    raise BenchError("echo peer closed")
                got += len(chunk)
            if i >= 50:
                samples.append((time.perf_counter() - t0) * 1000)
        sock.close()
        return summarize(samples)
    finally:
        procs.stop(["limit-echo"])
        path.unlink(missing_ok=True)


def socket_throughput(procs: Procs, total: int, path: Path) -> float:
    """MB/s of ``total`` bytes sent over a Unix socket to another process that writes them to ``path``."""
    listening = path.with_suffix(".sock")
    try:
        sock = _peer(procs, "limit-sink", "sink", listening, str(path))
        chunk = (b"tuici log throughput line: the quick brown fox jumps over the lazy dog 0123456789\n" * 800)[:65536]
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            n = min(len(chunk), total - sent)
            sock.sendall(chunk[:n])
            sent += n
        sock.shutdown(socket.SHUT_WR)
        if sock.recv(16) != b"done":
            raise BenchError("sink did not confirm")
        elapsed = time.perf_counter() - t0
        sock.close()
        return total / 1e6 / elapsed
    finally:
        procs.stop(["limit-sink"])
        path.unlink(missing_ok=True)
        listening.unlink(missing_ok=True)


def spawn_ms(command: str, repeats: int = 20, cwd: Path | None = None) -> dict[str, float]:
    """`/bin/sh -c COMMAND` run directly: wall time from spawn to exit, in ms."""
    samples = [timed_run(["/bin/sh", "-c", command], cwd=cwd) * 1000 for _ in range(repeats)]
    return summarize(samples)


def argv_ms(argv: list[str], repeats: int) -> dict[str, float]:
    """Spawn-to-exit time of a command, run ``repeats`` times."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append((time.perf_counter() - t0) * 1000)
    return summarize(samples)


def stamp_delay_ms(stampdir: Path, repeats: int = 20) -> dict[str, float]:
    """How long after spawning `/bin/sh -c 'date +%s%N > file'` its timestamp says it started."""
    samples = []
    target = stampdir / "direct"
    for _ in range(repeats):
        t0 = time.time()
        subprocess.run(["/bin/sh", "-c", f"date +%s%N > '{target}'"], check=True)
        samples.append((int(target.read_text()) / 1e9 - t0) * 1000)
    target.unlink(missing_ok=True)
    return summarize(samples)


def git_checkout_ms(repo: Path, shas: list[str], workdir: Path) -> dict[str, float]:
    """git alone doing a runner's work per job: a kept shared clone set to each commit and cleaned."""
    clone = workdir / "limit-clone"
    shutil.rmtree(clone, ignore_errors=True)
    git(workdir, "clone", "-q", "--shared", "--no-checkout", str(repo), str(clone))
    git(clone, "checkout", "-q", "--force", "--detach", shas[0])
    # Files written in the same second as the index are "racily clean" and re-hashed by every checkout
    # until the index is rewritten later; a runner's clone is older than that when jobs are timed.
    time.sleep(1.1)
    git(clone, "checkout", "-q", "--force", "--detach", shas[0])
    samples = []
    for sha in shas[1:]:
        t0 = time.perf_counter()
        git(clone, "checkout", "-q", "--force", "--detach", sha)
        git(clone, "clean", "-ffdxq")
        samples.append((time.perf_counter() - t0) * 1000)
    shutil.rmtree(clone, ignore_errors=True)
    return summarize(samples)


def git_observe_ms(repo: Path, repeats: int = 10) -> dict[str, float]:
    """git alone doing an observer's work per commit: list the branch tips, log the new commit."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        git(repo, "for-each-ref", "--format=%(refname:short)%00%(objectname)", "refs/heads")
        git(repo, "log", "-1", "--format=%H%x1f%an%x1f%ct%x1f%s", "HEAD", "--")
        samples.append((time.perf_counter() - t0) * 1000)
    return summarize(samples)


def python_ms(code: str, repeats: int = 5) -> dict[str, float]:
    """A fresh interpreter running ``code`` (e.g. importing a tuici module), in ms."""
    timed_run([PY, "-c", code])  # warm the page cache and .pyc files
    return summarize(timed_run([PY, "-c", code]) * 1000 for _ in range(repeats))


def direct_write_mbps(command: str, total: int, path: Path, repeats: int = 1) -> float:
    """MB/s of a command run directly with its output going straight to a file."""
    best = []
    for _ in range(repeats):
        t = timed_run(["/bin/sh", "-c", f"{command} > '{path}'"])
        size = path.stat().st_size
        path.unlink()
        if size < total:
            raise BenchError(f"direct command wrote {size} bytes, expected {total}")
        best.append(total / 1e6 / t)
    return sorted(best)[len(best) // 2]


def cores() -> int:
    return os.cpu_count() or 1

"""The benchmark suite runs, on its tiny size, and produces every row it was asked for; the Buildbot rows run
Buildbot beside tuici, or say why they cannot, and leave nothing running, also when interrupted.

Timings are never asserted: only that each figure is a number.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tuici.supervisor import MARK

ROOT = Path(__file__).resolve().parent.parent
ROWS = ["commit-latency", "job-overhead", "environments", "real-suite", "backlog", "bisect", "log-throughput", "idle",
        "startup", "scale", "control-center", "tests-storage"]
BUILDBOT_ROWS = ["buildbot-latency", "buildbot-overhead", "buildbot-backlog", "buildbot-idle", "buildbot-startup",
                 "buildbot-replay"]


@pytest.mark.timeout(300)
def test_bench_quick_produces_every_row_with_numbers(tmp_path: Path):
    out, data = tmp_path / "RESULTS.md", tmp_path / "results.json"
    res = _run_bench(["--quick", "--only", ",".join(ROWS), "--out", str(out), "--json", str(data)], timeout=280)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    results = json.loads(data.read_text())
    figures = results["figures"]
    assert {f["row"] for f in figures} == set(ROWS)
    for f in figures:
        assert not f["error"], f
        assert isinstance(f["value"], (int, float)) and math.isfinite(f["value"]), f
    text = out.read_text()
    assert "## Machine" in text and "| cpu |" in text
    for f in figures:
        assert f["figure"].replace("|", "\\|") in text
    assert _left_behind(results["meta"]["bench_pid"]) == []


@pytest.mark.timeout(300)
def test_bench_failover_row_measures_takeovers_and_postgresql_beside_sqlite(tmp_path: Path):
    """Its own run: a private PostgreSQL server, takeovers after SIGKILL and after a cut link (a network
    namespace), and the workloads on both stores; nothing left running."""
    data = tmp_path / "results.json"
    res = _run_bench(["--quick", "--only", "failover", "--no-write", "--json", str(data)], timeout=280)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    results = json.loads(data.read_text())
    figures = results["figures"]
    assert len(figures) == 4 and {f["row"] for f in figures} == {"failover"}
    for f in figures:
        assert not f["error"], f
        assert isinstance(f["value"], (int, float)) and math.isfinite(f["value"]), f
    assert _left_behind(results["meta"]["bench_pid"]) == []


@pytest.mark.timeout(120)
def test_bench_only_runs_the_rows_asked_for(tmp_path: Path):
    data = tmp_path / "results.json"
    res = _run_bench(["--quick", "--only", "job-overhead,control-center", "--no-write", "--json", str(data),
                      "--size", "overhead_jobs=2"], timeout=110)
    assert res.returncode == 0, res.stderr[-5000:]
    figures = json.loads(data.read_text())["figures"]
    rows = [f["row"] for f in figures]
    assert rows[0] == "job-overhead" and set(rows[1:]) == {"control-center"}
    assert all(isinstance(f["value"], (int, float)) for f in figures)
    assert "per-job overhead" in res.stdout  # the table is printed


@pytest.mark.timeout(900)
def test_bench_buildbot_rows_give_buildbots_figures_beside_tuicis(tmp_path: Path):
    """`--only buildbot` (one command) installs Buildbot in the bench's cache, or reuses it, and each figure is
    Buildbot's with tuici's on the same workload beside it, also in RESULTS.md's own table."""
    out, data = tmp_path / "RESULTS.md", tmp_path / "results.json"
    res = _run_bench(["--quick", "--only", "buildbot", "--out", str(out), "--json", str(data)], timeout=880)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    results = json.loads(data.read_text())
    assert results["meta"]["rows"] == BUILDBOT_ROWS
    figures = results["figures"]
    assert {f["row"] for f in figures} == set(BUILDBOT_ROWS)
    for f in figures:
        assert not f["error"] and not f["note"].startswith("skipped"), f
        for number in (f["value"], f["tuici"]):
            assert isinstance(number, (int, float)) and math.isfinite(number), f
    replay = next(f for f in figures if f["row"] == "buildbot-replay")
    assert replay["details"]["wrong_verdicts"] == {"tuici": [], "Buildbot": []}
    assert "Buildbot / tuici" in res.stdout
    text = out.read_text()
    assert "## Buildbot beside tuici" in text and "| workload | tuici | Buildbot | Buildbot / tuici |" in text
    assert _left_behind(results["meta"]["bench_pid"]) == []


@pytest.mark.timeout(300)
def test_bench_buildbot_rows_are_skipped_with_the_reason_when_buildbot_cannot_be_installed(tmp_path: Path):
    """pip finding no Buildbot (no index: as on a machine without network) skips every Buildbot row, saying why,
    without failing the run, and leaves no half-made virtualenv to be taken for a finished one."""
    data, cache = tmp_path / "results.json", tmp_path / "cache"
    env = {"TUICI_BENCH_CACHE": str(cache), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)}
    res = _run_bench(["--quick", "--only", "buildbot", "--no-write", "--json", str(data)], timeout=280, env=env)
    assert res.returncode == 0, res.stderr[-5000:]
    figures = json.loads(data.read_text())["figures"]
    assert [f["row"] for f in figures] == BUILDBOT_ROWS
    for f in figures:
        assert f["value"] is None and not f["error"], f
        assert f["note"].startswith("skipped: Buildbot could not be installed: ") and "buildbot" in f["note"], f
    assert "skipped: Buildbot could not be installed" in res.stdout
    assert not list(cache.glob("*/bench-installed.json"))


@pytest.mark.timeout(600)
def test_bench_interrupted_while_buildbot_runs_stops_every_process(tmp_path: Path):
    """Ctrl-C (SIGINT) while Buildbot's master and workers run: the bench stops them all and exits."""
    log = tmp_path / "stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench", "--quick", "--only", "buildbot-startup", "--no-write"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 500
        while not any("buildbot-worker" in " ".join(_cmdline(p)) for p in _marked(proc.pid)):
            assert proc.poll() is None, log.read_text()[-5000:]
            assert time.monotonic() < deadline, "no Buildbot worker started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130, log.read_text()[-5000:]
        assert _left_behind(proc.pid) == []
    finally:
        for child in _marked(proc.pid):
            child.kill()
        proc.kill()
        proc.wait()


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _run_bench(args: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m bench ARGS`; past ``timeout`` the bench and every process it started are killed (its components
    are in sessions of their own, so killing the bench alone would leave them running), and the test fails."""
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        left = _marked(proc.pid)
        proc.kill()
        for child in left:
            try:
                child.kill()
            except psutil.Error:
                pass
        out, err = proc.communicate()
        pytest.fail(f"the bench took more than {timeout:.0f} s; its stderr ends:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _left_behind(root: int) -> list[str]:
    """Command lines of live processes marked (directly, or through a supervisor they started) by the bench."""
    found = []
    for proc in _marked(root):
        try:
            found.append(" ".join(proc.cmdline()))
        except psutil.Error:
            pass
    return found


def _marked(root: int) -> list[psutil.Process]:
    """Live processes marked (directly, or through a supervisor they started) by the bench process."""
    marks: dict[int, tuple[str, psutil.Process]] = {}
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARK):
                marks[proc.pid] = (proc.environ()[MARK], proc)
        except psutil.Error:
            pass
    ours, found, grew = {str(root)}, [], True
    while grew:
        grew = False
        for pid, (mark, proc) in marks.items():
            if mark in ours and str(pid) not in ours:
                ours.add(str(pid))
                found.append(proc)
                grew = True
    return found

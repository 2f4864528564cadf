"""The benchmark suite runs, on its tiny size, and produces every row it was asked for.

Timings are never asserted: only that each figure is a number.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tuici.supervisor import MARK

ROOT = Path(__file__).resolve().parent.parent
ROWS = ["commit-latency", "job-overhead", "environments", "real-suite", "backlog", "bisect", "log-throughput", "idle",
        "startup", "scale", "control-center"]


@pytest.mark.timeout(300)
def test_bench_quick_produces_every_row_with_numbers(tmp_path: Path):
    out, data = tmp_path / "RESULTS.md", tmp_path / "results.json"
    res = _run_bench(["--quick", "--out", str(out), "--json", str(data)], timeout=280)
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


def _run_bench(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """`python -m bench ARGS`; past ``timeout`` the bench and every process it started are killed (its components
    are in sessions of their own, so killing the bench alone would leave them running), and the test fails."""
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
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

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
ROWS = ["commit-latency", "job-overhead", "environments", "real-suite", "backlog", "log-throughput", "idle", "startup",
        "scale",
        "control-center"]


@pytest.mark.timeout(300)
def test_bench_quick_produces_every_row_with_numbers(tmp_path: Path):
    out, data = tmp_path / "RESULTS.md", tmp_path / "results.json"
    res = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--json", str(data)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
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
    res = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "job-overhead,control-center", "--no-write",
         "--json", str(data), "--size", "overhead_jobs=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert res.returncode == 0, res.stderr[-5000:]
    figures = json.loads(data.read_text())["figures"]
    rows = [f["row"] for f in figures]
    assert rows[0] == "job-overhead" and set(rows[1:]) == {"control-center"}
    assert all(isinstance(f["value"], (int, float)) for f in figures)
    assert "per-job overhead" in res.stdout  # the table is printed


def _left_behind(root: int) -> list[str]:
    """Live processes marked (directly, or through a supervisor they started) by the bench process."""
    marks: dict[int, str] = {}
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARK):
                marks[proc.pid] = proc.environ()[MARK]
        except psutil.Error:
            pass
    ours, found, grew = {str(root)}, [], True
    while grew:
        grew = False
        for pid, mark in marks.items():
            if mark in ours and str(pid) not in ours:
                ours.add(str(pid))
                found.append(pid)
                grew = True
    return [" ".join(psutil.Process(pid).cmdline()) for pid in found if psutil.pid_exists(pid)]

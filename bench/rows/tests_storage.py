"""tests-storage: a job reporting 50,000 test cases, from its JUnit XML to stored, then listed by `tuici tests`,
and the dispatcher's memory meanwhile.

The job's command writes the XML pytest would write for a generated file of that many parametrized tests (one
failing), as other tools write theirs: pytest itself takes a minute over 50,000 cases on a loaded 2-core
machine, which would only be waited through here. The file it names is in the repository, so the ids are
resolved as pytest's are.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil

from ..harness import PY, BenchError, Figure, Repo, RssSampler, summarize
from .common import Context, _cluster, _plain_env, _profiled, _warm_up, toml

WRITER = '''\
import os, sys, time
count = int(sys.argv[1])
cases = []
for n in range(count):
    failure = '<failure message="assert 7 != 7">n = 7</failure>' if n == 7 else ""
    cases.append(f'<testcase classname="tests.test_many" name="test_case[{n}]" time="0.001">{failure}</testcase>')
with open(os.environ["TUICI_JUNIT_XML"], "w") as fh:
    fh.write('<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="0" '
             f'tests="{count}">{"".join(cases)}</testsuite></testsuites>')
print(f"tuici-bench: junit written at {time.time():.6f}", flush=True)
raise SystemExit(1)
'''
MANY = "import pytest\n\n@pytest.mark.parametrize('n', range({count}))\ndef test_case(n):\n    assert n != 7\n"
WRITTEN = re.compile(r"tuici-bench: junit written at ([0-9.]+)")


def tests_storage(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    count = s.tests_cases
    files = {"tests/test_many.py": MANY.format(count=count), "write_junit.py": WRITER}
    repo = Repo(ctx.tmp / "tests-repo", toml("true", 30), files=10, extra=files)
    cluster = _cluster(ctx, "tests", repo, 1)
    stored, listed, failed_only, peaks = [], [], [], []
    try:
        _warm_up(cluster, repo, 1)
        baseline = psutil.Process(cluster.pid("dispatcher")).memory_info().rss
        _profiled(ctx, "tests-storage", cluster, ["dispatcher", "r1"])
        for i in range(s.tests_repeats):
            config = {"tuici.toml": toml(f"python write_junit.py {count}", 300)} if i == 0 else None
            with RssSampler({"dispatcher": cluster.pid("dispatcher")}) as rss:
                sha, _ = repo.commit(files=config)
                job = cluster.wait_jobs([sha], timeout=300, interval=0.02)[sha]
                seen = time.time()
            if job.state != "failed" or job.passed != count - 1:
                raise BenchError(f"job {job.id} ended {job.state} with {job.passed} passed: {job.error}")
            log = (repo.state_path / "logs" / "jobs" / f"{job.id}.log").read_text()
            written = WRITTEN.search(log)
            if written is None:
                raise BenchError(f"job {job.id} did not say when it wrote its JUnit XML")
            stored.append((seen - float(written.group(1))) * 1000)
            peaks.append(rss.peak["dispatcher"] / 2**20)
            for out, args in ((listed, ["--json"]), (failed_only, ["--failed"])):
                t = time.perf_counter()
                res = subprocess.run([PY, "-m", "tuici", "tests", str(job.id), *args], cwd=repo.path,
                                     capture_output=True, env=_plain_env())
                out.append((time.perf_counter() - t) * 1000)
                if res.returncode != 0:
                    raise BenchError(f"tuici tests failed: {res.stderr.decode()[-300:]}")
            ctx.say(f"tests-storage: {count} cases stored {stored[-1]:.0f} ms after the XML was written, "
                    f"listed in {listed[-1]:.0f} ms; dispatcher peak RSS {peaks[-1]:.0f} MiB")
        ctx.profiler.stop()
    finally:
        ctx.profiler.stop()
        cluster.stop()
    parse_ms, write_ms = _limits(ctx.tmp / "tests-limit", count)
    cli_ms = ctx.python_ms("import tuici.cli")
    st, ls, fo, pk = summarize(stored), summarize(listed), summarize(failed_only), summarize(peaks)
    return [
        Figure("tests-storage", f"{count} test cases: JUnit XML written -> stored", "ms", st["p50"], "<= 3000 ms",
               st["p50"] <= 3000, spread=f"min {st['min']:.0f}, max {st['max']:.0f}, n={st['n']}",
               limit=f"stdlib XML parse {parse_ms:.0f} ms + tuici's store write alone {write_ms:.0f} ms",
               stats=st, details={"xml_parse_ms": parse_ms, "store_write_ms": write_ms},
               note="the runner reads the XML, sends the cases in pieces, the dispatcher stores them with the "
                    "result in one transaction; seen by polling status every 20 ms"),
        Figure("tests-storage", f"`tuici tests JOB --json`, {count} cases", "ms", ls["p50"], "<= 1500 ms",
               ls["p50"] <= 1500, spread=f"min {ls['min']:.0f}, max {ls['max']:.0f}, n={ls['n']}; "
                                         f"--failed {fo['p50']:.0f} ms",
               limit=f"interpreter + tuici.cli imports {cli_ms['p50']:.0f} ms", stats=ls,
               details={"failed_only_ms": fo}),
        Figure("tests-storage", "dispatcher peak RSS while storing them", "MiB", pk["max"], "< 150 MiB",
               pk["max"] < 150, spread=f"baseline {baseline / 2**20:.0f} MiB before the jobs", stats=pk,
               limit=f"{baseline / 2**20:.0f} MiB (its RSS before the jobs)"),
    ]


def _limits(folder: Path, count: int) -> tuple[float, float]:
    """The floor under the first figure, in this process: parsing such a file with the stdlib alone, and
    tuici's store writing that many cases in one transaction (into a fresh database)."""
    from tuici import wire as p
    from tuici.store import Batch, JobTests, Store

    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / "junit.xml"
    cases = "".join(f'<testcase classname="tests.test_many" name="test_case[{n}]" time="0.001"/>'
                    for n in range(count))
    xml.write_text(f"<testsuites><testsuite>{cases}</testsuite></testsuites>")
    t = time.perf_counter()
    ET.parse(xml)
    parse_ms = (time.perf_counter() - t) * 1000
    store = Store(folder / "tuici.db")

    async def write() -> float:
        await store.run(store.open)
        try:
            await store.run(store.write, Batch(commits=[(p.CommitInfo(sha="a" * 40, branch="main"), 0.0)]))
            tests = JobTests(1, "a" * 40, "main", 0.0, [p.TestCase(name=f"tests/test_many.py::test_case[{n}]",
                                                                   outcome="passed") for n in range(count)])
            t = time.perf_counter()
            await store.run(store.write, Batch(tests=[tests]))
            return (time.perf_counter() - t) * 1000
        finally:
            await asyncio.to_thread(store.shutdown)
    return parse_ms, asyncio.run(write())

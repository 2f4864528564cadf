"""real-suite: a generated pytest suite via tuici against the same suite run directly."""

from __future__ import annotations

import shlex
import subprocess
import time

from ..harness import PY, BenchError, Figure, Repo, summarize
from .common import Context, _cluster, _plain_env, _profiled, _warm_up, toml

SUITE_TEMPLATE = '''\
import hashlib
import json
import time

import pytest


@pytest.mark.parametrize("n", range({params}))
def test_hash_{i}(n):
    data = json.dumps({{"n": n, "items": list(range(500))}}).encode()
    for _ in range({loops}):
        data = hashlib.sha256(data).digest() * 32
    time.sleep({sleep})
    assert len(data) == 1024


def test_files_{i}(tmp_path):
    for k in range(20):
        (tmp_path / f"f{{k}}").write_text("x" * 1000)
    assert len(list(tmp_path.iterdir())) == 20


class TestModel{i}:
    @pytest.fixture
    def model(self):
        return {{"id": {i}, "tags": ["a", "b"], "values": list(range(100))}}

    def test_roundtrip(self, model):
        assert json.loads(json.dumps(model)) == model

    def test_sum(self, model):
        assert sum(model["values"]) == 4950
'''


def _suite_files(seconds: float) -> dict[str, str]:
    modules = 10 if seconds >= 1 else 3
    params = 10
    # roughly: pytest start-up ~0.7 s, then the tests' sleeps and hashing make up the rest
    budget = max(0.0, seconds - 0.8)
    sleep = round(budget * 0.6 / (modules * params), 4)
    loops = max(1, int(budget * 0.4 / (modules * params) / 2e-6))
    files = {f"tests/test_mod{i}.py": SUITE_TEMPLATE.format(i=i, params=params, sleep=sleep, loops=loops)
             for i in range(modules)}
    files["pytest.ini"] = "[pytest]\ntestpaths = tests\n"
    return files


def real_suite(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    command = f"{shlex.quote(PY)} -m pytest -q -p no:cacheprovider --junitxml=\"$TUICI_JUNIT_XML\""
    # The suite's own plugins only: the venv's (textual snapshots, hypothesis...) take ~2.5 s to import. And
    # .pyc files written and used on both sides, as on a developer's machine, whatever the bench inherits.
    suite_env = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": ""}
    config = toml(command, 300) + "env = { PYTEST_DISABLE_PLUGIN_AUTOLOAD = \"1\", PYTHONDONTWRITEBYTECODE = \"\" }\n"
    repo = Repo(ctx.tmp / "suite-repo", config, files=10, extra=_suite_files(s.suite_seconds))
    checkout = ctx.tmp / "suite-checkout"
    subprocess.run(["git", "clone", "-q", str(repo.path), str(checkout)], check=True)
    junit = ctx.tmp / "suite-direct.xml"

    def direct() -> float:
        t0 = time.perf_counter()
        res = subprocess.run(["/bin/sh", "-c", command], cwd=checkout, capture_output=True,
                             env={**_plain_env(), **suite_env, "TUICI_JUNIT_XML": str(junit)})
        if res.returncode != 0:
            raise BenchError(f"the suite fails when run directly: {res.stdout.decode()[-500:]}")
        return time.perf_counter() - t0

    def via_tuici():
        sha, returned = repo.commit()
        time.sleep(0.2)
        job = cluster.wait_jobs([sha], timeout=300, interval=0.5)[sha]
        if job.state != "passed":
            raise BenchError(f"the suite failed in tuici: job {job.id} {job.state} {job.error}")
        return job.finished_at - returned, job

    cluster = _cluster(ctx, "suite", repo, s.runners)
    directs, viatuici, in_runner, ratios, pairs = [], [], [], [], []
    try:
        direct()  # warm-up: .pyc files in the checkout, page cache
        _warm_up(cluster, repo, s.runners)
        _profiled(ctx, "real-suite", cluster, ["dispatcher", "r1"])
        for i in range(s.suite_repeats):
            # The pair's two runs back to back, in turn direct first and tuici first: the CPU's speed drifts
            # here from minute to minute, and a fixed order would also favour one side with a warmer cache.
            # (Each run starts after a gap: the runner cleans its workspace right after a job.)
            if i % 2:
                t, job = via_tuici()
                time.sleep(s.gap)
                d = direct()
            else:
                d = direct()
                time.sleep(s.gap)
                t, job = via_tuici()
            pairs.append({"first": "tuici" if i % 2 else "direct", "direct_s": round(d, 3), "tuici_s": round(t, 3),
                          "in_runner_s": round(job.duration_s, 3), "runner": job.runner})
            directs.append(d)
            viatuici.append(t)
            in_runner.append(job.duration_s)
            ratios.append(t / d)
            ctx.say(f"real-suite: direct {d:.2f} s, via tuici {t:.2f} s (tests: {job.passed} passed)")
            time.sleep(s.gap)
        ctx.profiler.stop()
    finally:
        ctx.profiler.stop()
        cluster.stop()
    sd, st = summarize(directs), summarize(viatuici)
    rs = summarize(ratios)
    ratio = rs["p50"]  # the median pair: each pair's runs are seconds apart, so drift cancels within it
    details = {"direct_s": sd, "commit_to_result_s": st, "command_in_runner_s": summarize(in_runner),
               "tuici_own_s (commit_to_result - command_in_runner)":
                   summarize(t - c for t, c in zip(viatuici, in_runner, strict=True)),
               "pair_ratios": rs, "ratio_of_medians": round(st["p50"] / sd["p50"], 4), "pairs": pairs}
    return [Figure("real-suite", "real suite: via tuici / direct", "ratio", ratio, "<= 1.05", ratio <= 1.05,
                   spread=f"median of {rs['n']} pairs (min {rs['min']:.3f}, max {rs['max']:.3f}); "
                          f"ratio of the medians {st['p50'] / sd['p50']:.3f}",
                   limit=f"1.000 (direct run {sd['p50']:.2f} s in a checkout)", stats=rs, details=details)]

"""real-suite: a generated pytest suite via tuici against the same suite run directly."""

from __future__ import annotations

import itertools
import resource
import shlex
import subprocess
import time

from ..harness import PY, BenchError, Figure, Repo, child_env, summarize
from .common import Context, _cluster, _profiled, _warm_up, toml

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


# Every round runs the same command three ways, in a rotating order (the CPU's speed drifts here from minute to
# minute, and a fixed order would also favour one way with a warmer cache).
WAYS = ("direct", "clean", "tuici")
ORDERS = list(itertools.permutations(WAYS))


def real_suite(ctx: Context) -> list[Figure]:
    """The suite directly in a developer's checkout (its .pyc files kept from the last run), directly in the same
    checkout cleaned as a runner cleans one before each job (``git clean -ffdx``: no ``__pycache__``, so pytest
    rewrites and compiles every test module again), and through tuici (commit to result). The figure is
    tuici / direct; its limit, clean / direct, is what any CI that trusts no file an earlier job wrote pays."""
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
    # The environment a runner gives the command (the bench's processes' own, as tuici's get it: no
    # PYTHONUNBUFFERED, which would make only the direct run write unbuffered), with what the runner adds that
    # can change how pytest runs (CI=true), and the same JUnit XML written on both sides.
    direct_env = {**{k: v for k, v in child_env().items() if not k.startswith("TUICI_")}, **suite_env,
                  "CI": "true", "TUICI_JUNIT_XML": str(junit)}

    def direct(clean: bool = False) -> float:
        if clean:  # untimed, as the runner's own clean is the job-overhead row's
            subprocess.run(["git", "clean", "-ffdxq"], cwd=checkout, check=True)
        cpu0 = _children_cpu()
        t0 = time.perf_counter()
        res = subprocess.run(["/bin/sh", "-c", command], cwd=checkout, capture_output=True, env=direct_env)
        took = time.perf_counter() - t0
        cpu[clean].append(_children_cpu() - cpu0)
        if res.returncode != 0:
            raise BenchError(f"the suite fails when run directly: {res.stdout.decode()[-500:]}")
        return took

    def via_tuici():
        sha, returned = repo.commit()
        time.sleep(0.2)
        job = cluster.wait_jobs([sha], timeout=300, interval=0.5)[sha]
        if job.state != "passed":
            raise BenchError(f"the suite failed in tuici: job {job.id} {job.state} {job.error}")
        return job.finished_at - returned, job

    cluster = _cluster(ctx, "suite", repo, s.runners)
    runs: dict[str, list[float]] = {way: [] for way in WAYS}
    in_runner, rounds = [], []
    cpu: dict[bool, list[float]] = {False: [], True: []}  # the direct runs' CPU time, by clean: less noisy here
    try:
        direct()  # warm-up: .pyc files in the checkout, page cache
        cpu[False].clear()
        _warm_up(cluster, repo, s.runners)
        _profiled(ctx, "real-suite", cluster, ["dispatcher", "r1"])
        for i in range(s.suite_repeats):
            order = ORDERS[i % len(ORDERS)]
            took, job = {}, None
            for way in order:
                if way == "tuici":
                    took[way], job = via_tuici()
                else:
                    took[way] = direct(clean=way == "clean")
                time.sleep(s.gap)  # (after a job, the runner cleans its workspace)
            assert job is not None
            for way in WAYS:
                runs[way].append(took[way])
            in_runner.append(job.duration_s)
            rounds.append({"order": "/".join(order), **{f"{way}_s": round(took[way], 3) for way in WAYS},
                           "in_runner_s": round(job.duration_s, 3), "runner": job.runner})
            ctx.say(f"real-suite: direct {took['direct']:.2f} s, from a clean checkout {took['clean']:.2f} s, "
                    f"via tuici {took['tuici']:.2f} s (tests: {job.passed} passed)")
        ctx.profiler.stop()
    finally:
        ctx.profiler.stop()
        cluster.stop()
    sd, sc, st = (summarize(runs[way]) for way in WAYS)
    # Each round's runs are seconds apart, so drift cancels within it: the median of the rounds' ratios.
    rs = summarize(t / d for t, d in zip(runs["tuici"], runs["direct"], strict=True))
    rc = summarize(c / d for c, d in zip(runs["clean"], runs["direct"], strict=True))
    ratio = rs["p50"]
    details = {"sides": {"direct": f"`{command}` in a checkout, its __pycache__ kept from the previous run",
                         "clean": "the same, right after `git clean -ffdx` (untimed) as a runner does before a job",
                         "tuici": "a commit to the same repository, timed from `git commit` returning to the result "
                                  "recorded; the runner runs the same command in its sandbox"},
               "direct_s": sd, "clean_checkout_s": sc, "commit_to_result_s": st,
               "command_in_runner_s": summarize(in_runner),
               # tuici - direct, round by round, in three parts that add up to it:
               "tuici_own_s (commit_to_result - command_in_runner)":
                   summarize(t - c for t, c in zip(runs["tuici"], in_runner, strict=True)),
               "runner_own_s (command_in_runner - clean: checkout, sandbox, reading the JUnit XML)":
                   summarize(r - c for r, c in zip(in_runner, runs["clean"], strict=True)),
               "clean_checkout_cost_s (clean - direct)":
                   summarize(c - d for c, d in zip(runs["clean"], runs["direct"], strict=True)),
               "direct_cpu_s": summarize(cpu[False]), "clean_checkout_cpu_s": summarize(cpu[True]),
               "clean_checkout_cost_cpu_s (clean - direct, CPU time)":
                   summarize(c - d for c, d in zip(cpu[True], cpu[False], strict=True)),
               "pair_ratios": rs, "clean_over_direct": rc, "ratio_of_medians": round(st["p50"] / sd["p50"], 4),
               "rounds": rounds}
    return [Figure("real-suite", "real suite: via tuici / direct", "ratio", ratio, "<= 1.02", ratio <= 1.02,
                   spread=f"median of {rs['n']} pairs (min {rs['min']:.3f}, max {rs['max']:.3f}); "
                          f"ratio of the medians {st['p50'] / sd['p50']:.3f}",
                   limit=f"{rc['p50']:.3f}: the same command from a clean checkout, as a job starts (no "
                         f"__pycache__); 1.000 in a warm one (direct run {sd['p50']:.2f} s)",
                   stats=rs, details=details)]


def _children_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime

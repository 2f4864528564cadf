"""Jobs with ``setup``: a virtualenv made for them from the commit, kept while its inputs hold, with real runners,
real uv and a real package (a wheel the test builds, so that nothing is fetched from the network).
"""

from __future__ import annotations

import pytest

from bench.harness import make_wheel

from conftest import wait_for


@pytest.fixture
def wheels(outside):
    folder = outside / "wheels"
    folder.mkdir()
    return folder


SRC_LAYOUT = {
    "src/calc/__init__.py": "import shout\n\ndef loud_sum(a, b):\n    return shout.shout(str(a + b))\n",
    "check.py": "import os, sys, calc\n"
                "print('result', calc.loud_sum(1, 2), 'env', os.environ['VIRTUAL_ENV'], 'python', sys.prefix)\n"
                "try:\n    open(os.path.join(sys.prefix, 'planted'), 'w')\n    print('environment: writable')\n"
                "except OSError:\n    print('environment: read-only')\n",
}


def _config(setup: str, extra: str = "") -> str:
    return f'setup = "{setup}"\ncommand = "python check.py"\nenv = {{ PYTHONPATH = "src" }}\ntimeout = 120\n{extra}'


@pytest.mark.parametrize("mode", ["on", "off"])
def test_setup_makes_an_environment_that_later_jobs_reuse_until_a_cache_key_file_changes(repo, cluster, wheels,
                                                                                        mode):
    """A src/ layout with a runtime dependency that setup installs: the first job makes the environment, the
    next reuses it, a changed requirements file makes a new one; in the sandbox, tests never write to it."""
    shout1 = make_wheel(wheels, "shout", "1.0", "def shout(text):\n    return text + '!'\n")
    shout2 = make_wheel(wheels, "shout", "2.0", "def shout(text):\n    return text.upper() + '!!'\n")
    cluster.start_observer()
    cluster.start_runner("r1", "--sandbox", mode)
    first = repo.commit("src layout", files={**SRC_LAYOUT, "requirements.txt": f"{shout1}\n"},
                        config=_config("pip install -r requirements.txt"))
    job = cluster.wait_job(first, timeout=120)
    out = cluster.log_of(job.id)
    assert job.state == "passed", out
    assert "result 3!" in out and ("environment: read-only" in out or mode == "off")
    assert "── setup: environment" in out and "── setup passed in" in out and "── tests ──" in out
    assert job.env and not job.env_reused

    second = repo.commit("unrelated change", files={"README": "hello\n"})
    job2 = cluster.wait_job(second, timeout=120)
    out = cluster.log_of(job2.id)
    assert job2.state == "passed" and "result 3!" in out, out
    assert (job2.env, job2.env_reused) == (job.env, True)
    assert "reused" in out

    third = repo.commit("new dependency version", files={"requirements.txt": f"{shout2}\n"})
    job3 = cluster.wait_job(third, timeout=120)
    out = cluster.log_of(job3.id)
    assert job3.state == "passed" and "result 3!!" in out, out
    assert job3.env != job.env and not job3.env_reused


def test_a_failing_setup_ends_the_job_in_error_with_its_exit_code(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    sha = repo.commit("broken setup", files=SRC_LAYOUT, config=_config("echo installing; exit 7"))
    job = cluster.wait_job(sha, timeout=120)
    out = cluster.log_of(job.id)
    assert job.state == "error" and job.exit_code == 7, out
    assert "setup failed with exit code 7" in job.error
    assert "installing" in out and "── tests" not in out
    # The half-made environment is not kept: a fixed setup makes it anew.
    fixed = repo.commit("fixed setup", config=_config("true"))
    job = cluster.wait_job(fixed, timeout=120)
    assert job.state == "failed" and not job.env_reused  # check.py cannot import shout: a test failure now


def test_runners_at_once_make_one_environment_and_share_it(repo, cluster, wheels):
    """Two runners get two commits of one branch with the same inputs at once: one makes the environment
    while the other waits for it, then reuses it."""
    shout = make_wheel(wheels, "shout", "1.0", "def shout(text):\n    return text + '!'\n")
    cluster.start_runner("r1")
    cluster.start_runner("r2")
    cluster.start_observer()
    cluster.wait_job(repo.head())
    wait_for(lambda: len(cluster.status().runners) == 2, message="two runners")
    # Two commits in a moment: the second job starts while the first one's setup sleeps.
    one = repo.commit("one", files={**SRC_LAYOUT, "requirements.txt": f"{shout}\n"},
                      config=_config("sleep 2; pip install -r requirements.txt"))
    two = repo.commit("two", files={"README": "x\n"})
    jobs = [cluster.wait_job(sha, timeout=120) for sha in (one, two)]
    assert all(job.state == "passed" for job in jobs), [cluster.log_of(job.id) for job in jobs]
    assert {job.runner for job in jobs} == {"r1", "r2"}
    assert len({job.env for job in jobs}) == 1
    assert sorted(job.env_reused for job in jobs) == [False, True]


def test_jobs_sharing_a_ready_environment_run_at_the_same_time(repo, cluster, wheels):
    """Using an environment takes a shared lock: two runners' jobs in one environment overlap, not queue."""
    shout = make_wheel(wheels, "shout", "1.0", "def shout(text):\n    return text + '!'\n")
    cluster.start_runner("r1")
    cluster.start_runner("r2")
    cluster.start_observer()
    stamp = 'python -c \\"import time; print(\'at\', time.time())\\"'
    config = _config("pip install -r requirements.txt").replace(
        'command = "python check.py"', f'command = "{stamp}; sleep 3; {stamp}"')
    first = repo.commit("ready", files={**SRC_LAYOUT, "requirements.txt": f"{shout}\n"}, config=config)
    assert cluster.wait_job(first, timeout=120).state == "passed"
    wait_for(lambda: len(cluster.status().runners) == 2, message="two runners")
    one = repo.commit("one", files={"a.txt": "1\n"})
    two = repo.commit("two", files={"b.txt": "2\n"})
    jobs = [cluster.wait_job(sha, timeout=120) for sha in (one, two)]
    assert all(job.state == "passed" and job.env_reused for job in jobs)
    spans = []
    for job in jobs:
        times = [float(line.split()[1]) for line in cluster.log_of(job.id).splitlines() if line.startswith("at ")]
        spans.append((times[0], times[-1]))
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans  # both were running at once


def test_environments_are_not_shared_across_branches(repo, cluster, wheels):
    """setup runs a commit's own code: what one branch's setup made is never what another branch's jobs use."""
    shout = make_wheel(wheels, "shout", "1.0", "def shout(text):\n    return text + '!'\n")
    cluster.start_observer()
    cluster.start_runner("r1")
    main = repo.commit("main", files={**SRC_LAYOUT, "requirements.txt": f"{shout}\n"},
                       config=_config("pip install -r requirements.txt"))
    on_main = cluster.wait_job(main, timeout=120)
    repo.git("checkout", "-q", "-b", "other")
    other = repo.commit("same inputs, other branch", files={"README": "x\n"})
    on_other = cluster.wait_job(other, timeout=120)
    assert on_main.state == on_other.state == "passed"
    assert on_main.env != on_other.env and not on_other.env_reused


def test_cached_environments_are_bounded_least_recently_used_first(tmp_path):
    from tuici.runner.environments import EnvCache, EnvSpec

    cache = EnvCache(tmp_path / "cache", limit=3 * 1024 * 1024)

    def spec(n: int) -> EnvSpec:
        return EnvSpec(repo="r", branch="main", python="python3", setup=["true"], inputs=(("a", str(n)),),
                       place="/tuici/env", source="/tuici/src")

    for n in range(4):
        lease, ready = cache.lease(spec(n))
        assert not ready
        path = cache.start(spec(n))
        (path / "blob").write_bytes(b"x" * 1024 * 1024)
        cache.finish(spec(n))
        if n == 1:
            lease.share()  # in use: never removed
            held = lease
        else:
            lease.close()
        cache.ready(spec(0)) if n == 3 else None  # 0 used again, most recently
    removed = {p.name for p in cache.evict()}
    assert spec(2).key in removed and spec(1).key not in removed and spec(0).key not in removed
    assert not cache.ready(spec(2)) and cache.ready(spec(1)) and cache.ready(spec(3))
    held.close()


def test_the_environment_key_covers_what_setup_depends_on():
    from tuici.runner.environments import EnvSpec, matching_files

    tracked = [("100644", "a1", "pyproject.toml"), ("100644", "b1", "requirements/dev.txt"),
               ("100644", "c1", "src/pkg/mod.py"), ("100644", "d1", "requirements-test.txt")]
    inputs = matching_files(tracked, ["pyproject.toml", "requirements*.txt"])
    assert inputs == (("pyproject.toml", "a1"), ("requirements-test.txt", "d1"), ("requirements/dev.txt", "b1"))
    base = EnvSpec(repo="r", branch="main", python="python3", setup=["pip", "install", "."], inputs=inputs,
                   place="/tuici/env", source="/tuici/src")
    variants = [base.__class__(**{**base.__dict__, field: value}) for field, value in
                (("branch", "dev"), ("python", "python3.12"), ("setup", ["true"]), ("inputs", inputs[:1]),
                 ("source", "/elsewhere"))]
    assert len({base.key, *(v.key for v in variants)}) == 1 + len(variants)

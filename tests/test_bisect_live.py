"""Bisections and the order of a backlog with real processes: a dispatcher, an observer and one runner on a real
repository whose test command is a shell test of a file, each job held at a gate until the test opens it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tuici import wire as p

from conftest import Cluster, GitRepo, tuici, wait_for


class Gates:
    """Each job waits for a file named after its id (or ``all``) in a directory its sandbox can see, then passes
    if the commit's state.txt says good."""

    def __init__(self, path: Path):
        self.path = path

    def config(self, extra: str = "") -> str:
        command = (f'while [ ! -e {self.path}/"$TUICI_JOB_ID" ] && [ ! -e {self.path}/all ]; do sleep 0.05; done; '
                   "grep -qx good state.txt")
        return f"command = {command!r}\ntimeout = 120\nbranches = ['main']\n{extra}\n"

    def open(self, job_id: int) -> None:
        (self.path / str(job_id)).touch()

    def open_all(self) -> None:
        (self.path / "all").touch()


class History:
    """A repository whose commits are good or bad (state.txt), made one at a time or pushed to main at once."""

    def __init__(self, path: Path, config: str):
        self.repo = GitRepo(path)
        self.n = 0
        self.first = self.repo.commit("commit 0", files={"state.txt": "good\n"}, config=config)

    def commit(self, state: str) -> str:
        self.n += 1
        return self.repo.commit(f"commit {self.n}", files={"state.txt": f"{state}\n", "n.txt": f"{self.n}\n"})

    def push(self, states: list[str]) -> list[str]:
        """Commits made on a detached HEAD, then main moved to the last of them at once."""
        self.repo.git("checkout", "-q", "--detach")
        shas = [self.commit(state) for state in states]
        self.repo.git("checkout", "-q", "-B", "main", shas[-1])
        return shas


def start(cluster: Cluster, gates: Gates, history: History) -> None:
    cluster.start_observer()
    cluster.start_runner("r1")
    gates.open(cluster.wait_job(history.first, states={"running"}).id)
    assert cluster.wait_job(history.first).state == "passed"


def bisection(cluster: Cluster, state: str = "running", jobs: int = 1) -> p.BisectionInfo:
    def find():
        found = cluster.status().bisections
        return found[-1] if found and found[-1].state == state and len(found[-1].jobs) >= jobs else None
    return wait_for(find, 60, interval=0.1, message=f"a bisection {state} with {jobs} job(s)")


def job_in(cluster: Cluster, job_id: int, state: str) -> p.JobInfo:
    return wait_for(lambda: next((j for j in cluster.jobs() if j.id == job_id and j.state == state), None), 60,
                    interval=0.1, message=f"job {job_id} {state}")


def test_a_bisection_over_16_commits_pushed_at_once_finds_the_first_bad_one_behind_a_newer_commit(
        tmp_path, outside, cluster_factory):
    gates = Gates(outside)
    history = History(tmp_path / "repo", gates.config("coalesce = true"))
    cluster = cluster_factory(history.repo)
    start(cluster, gates, history)
    shas = history.push(["good"] * 10 + ["bad"] * 6)  # commits 1..16; commit 11 is the first bad one
    gates.open(cluster.wait_job(shas[-1], states={"running"}).id)
    assert cluster.wait_job(shas[-1]).state == "failed"
    first_probe = job_in(cluster, bisection(cluster).jobs[0], "running")
    [shown] = json.loads(tuici("status", "--json", str(history.repo.path), cwd=tmp_path).stdout)["bisections"]
    assert shown == {"branch": "main", "good": history.first, "bad": shas[-1], "first_bad": None,
                     "state": "running", "jobs": [first_probe.id]}

    newer = history.commit("bad")  # pushed during the bisection: its job goes ahead of the bisection's next
    newer_job = cluster.wait_job(newer, states={"queued"})
    gates.open_all()
    found = bisection(cluster, "found")
    assert found.first_bad == shas[10] and (found.good, found.bad) == (history.first, shas[-1])
    assert 1 <= len(found.jobs) <= 5
    jobs = {j.id: j for j in cluster.jobs()}
    assert found.jobs[0] == first_probe.id
    assert all(jobs[newer_job.id].started_at < jobs[j].started_at for j in found.jobs[1:])
    assert cluster.wait_job(newer).state == "failed"
    # Coalesced: besides the bisection's jobs, only commit 0, the pushed tip and the newer commit had one.
    assert {j.commit for j in jobs.values()} == {history.first, shas[-1], newer} | {jobs[j].commit for j in found.jobs}
    assert {c.sha for c in cluster.status().commits} >= set(shas)  # every pushed commit is recorded
    listed = tuici("status", str(history.repo.path), cwd=tmp_path).stdout
    assert f"found     {history.first[:10]}..{shas[-1][:10]}" in listed and f"first bad {shas[10][:10]}" in listed


def test_a_newer_commit_that_passes_abandons_the_bisection(tmp_path, outside, cluster_factory):
    gates = Gates(outside)
    history = History(tmp_path / "repo", gates.config("coalesce = true"))
    cluster = cluster_factory(history.repo)
    start(cluster, gates, history)
    shas = history.push(["good"] * 3 + ["bad"] * 5)
    gates.open(cluster.wait_job(shas[-1], states={"running"}).id)
    probe = job_in(cluster, bisection(cluster).jobs[0], "running")  # commit 4: bad
    fixed = history.commit("good")
    cluster.wait_job(fixed, states={"queued"})
    gates.open(probe.id)
    next_probe = job_in(cluster, bisection(cluster, jobs=2).jobs[1], "queued")  # behind the fix
    gates.open(cluster.wait_job(fixed, states={"running"}).id)
    assert cluster.wait_job(fixed).state == "passed"
    abandoned = bisection(cluster, "abandoned", jobs=2)
    assert abandoned.first_bad is None and abandoned.jobs == [probe.id, next_probe.id]
    assert job_in(cluster, next_probe.id, "cancelled").runner is None  # never ran
    assert len(cluster.status().bisections) == 1


def test_a_bisection_goes_on_after_the_dispatcher_restarts(tmp_path, outside, cluster_factory):
    gates = Gates(outside)
    history = History(tmp_path / "repo", gates.config("coalesce = true"))
    cluster = cluster_factory(history.repo, heartbeat_timeout=5.0)
    start(cluster, gates, history)
    shas = history.push(["good", "bad", "bad", "bad"])
    gates.open(cluster.wait_job(shas[-1], states={"running"}).id)
    probe = job_in(cluster, bisection(cluster).jobs[0], "running")
    cluster.kill("dispatcher", signal.SIGKILL)
    cluster.start_dispatcher()
    assert cluster.status().bisections[0].jobs == [probe.id]  # as stored
    gates.open_all()
    found = bisection(cluster, "found")
    assert found.first_bad == shas[1] and found.jobs[0] == probe.id and len(found.jobs) <= 3
    assert len(cluster.status().bisections) == 1


@pytest.mark.parametrize(("order", "expected"), [("newest-first", [0, 5, 4, 3, 2, 1]),
                                                 ("oldest-first", [0, 1, 2, 3, 4, 5])])
def test_with_one_runner_and_a_backlog_the_newest_commit_goes_first(tmp_path, outside, cluster_factory, order,
                                                                    expected):
    gates = Gates(outside)
    history = History(tmp_path / "repo", gates.config(f"order = {order!r}"))
    cluster = cluster_factory(history.repo)
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(history.first, states={"running"})  # held at its gate: a backlog builds up behind it
    shas = [history.first]
    for _ in range(5):
        shas.append(history.commit("good"))
        cluster.wait_job(shas[-1], states={"queued"})  # each reported on its own
    gates.open_all()
    for sha in shas:
        assert cluster.wait_job(sha).state == "passed"
    started = sorted(cluster.jobs(), key=lambda j: j.started_at or 0)
    assert [shas.index(j.commit) for j in started] == expected
    assert json.loads(tuici("status", "--json", str(history.repo.path), cwd=tmp_path).stdout)["bisections"] == []


def test_first_parent_tests_the_merges_and_a_bisection_finds_the_bad_commit_of_a_merged_branch(
        tmp_path, outside, cluster_factory):
    gates = Gates(outside)
    history = History(tmp_path / "repo", gates.config("first_parent = true"))
    repo = history.repo
    cluster = cluster_factory(repo)
    start(cluster, gates, history)
    gates.open_all()
    repo.git("checkout", "-q", "-b", "topic")
    topic = [history.commit(state) for state in ("good", "bad", "bad")]
    repo.git("checkout", "-q", "main")
    on_main = repo.commit("on main meanwhile", files={"main.txt": "x\n"})
    assert cluster.wait_job(on_main).state == "passed"  # the last verdict before the merge
    repo.git("merge", "-q", "--no-ff", "-m", "merge topic", "topic")
    merge = repo.head()
    assert cluster.wait_job(merge).state == "failed"
    found = bisection(cluster, "found")
    # good: on_main when it was tested before the merge failed; else (reported with the merge, so behind it,
    # newest first) the first commit, the last one that had passed then. Either way the first bad is found.
    assert found.first_bad == topic[1] and found.good in (on_main, history.first) and found.bad == merge
    tested = {j.commit for j in cluster.jobs()}
    assert on_main in tested and topic[2] not in tested  # first-parent commits queued; the rest left to bisect

"""`tuici status --json` over a long history: the dispatcher's own JSON, sent in pieces, right as jobs change."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec

from tuici import wire as p
from tuici.dispatcher.status import JsonPrefix
from tuici.store import Batch, Store

from conftest import Cluster, _env, toml_command

HISTORY = 3000  # finished jobs: ~1.4 MB of JSON, more than one StatusJson piece


def _write_history(repo, shas: list[str]) -> None:
    """Finished jobs for ``shas``, written through tuici's store as a dispatcher that ran them would have."""
    repo.state.ensure()
    store = Store(repo.state.db)
    store.open()
    try:
        batch = Batch()
        for i, sha in enumerate(shas, start=1):
            t = 1.7e9 + 10 * i
            batch.commits.append((p.CommitInfo(sha=sha, branch="main", author="Dev", subject=f"change {i}", time=t), t))
            batch.jobs[i] = (p.JobInfo(id=i, commit=sha, branch="main", state="passed", runner="r0", attempts=1,
                                       exit_code=0, duration_s=1.25, passed=7, queued_at=t, started_at=t + 0.5,
                                       finished_at=t + 2), 0)
            batch.attempts[(i, 1)] = p.AttemptInfo(job_id=i, attempt=1, runner="r0", started_at=t + 0.5,
                                                   ended_at=t + 2, outcome="passed")
        batch.meta["repo_url"] = str(repo.path)
        store.write(batch)
    finally:
        store.shutdown()


def _status_json(repo) -> bytes:
    out = subprocess.run([sys.executable, "-m", "tuici", "status", "--json"], cwd=repo.path, capture_output=True,
                         env=_env(), check=True)
    return out.stdout


def _history_of(document: dict) -> dict:
    return {key: document[key] for key in ("repo_url", "commits", "jobs", "attempts")}


def test_status_json_over_a_long_history_matches_the_status_reply_as_jobs_change(repo, tmp_path):
    missing = [f"{i:040x}" for i in range(1, HISTORY + 1)]  # commits the repository does not have
    _write_history(repo, missing)
    cluster = Cluster(repo, tmp_path)
    try:
        cluster.start_dispatcher()
        cluster.start_runner("r1")
        cluster.start_observer()
        sha = repo.commit("real", config=toml_command("true"))
        cluster.wait_job(sha)

        first = _status_json(repo)
        assert len(first) > p.OUTPUT_CHUNK  # two pieces at least
        document = json.loads(first)
        assert _history_of(document) == _history_of(json.loads(p.to_json_bytes(cluster.status())))
        assert len(document["jobs"]) == HISTORY + 1 and document["jobs"][-1]["state"] == "passed"

        # A rerun of an old commit adds a job after the kept history; the runner cannot find the commit.
        rerun = subprocess.run([sys.executable, "-m", "tuici", "rerun", missing[10]], cwd=repo.path,
                               capture_output=True, env=_env(), text=True)
        assert rerun.returncode == 0, rerun.stderr
        job = cluster.wait_job(missing[10])
        assert job.state == "error" and job.id == HISTORY + 2
        second = json.loads(_status_json(repo))
        assert _history_of(second) == _history_of(json.loads(p.to_json_bytes(cluster.status())))
        assert second["jobs"][-1]["id"] == job.id and second["jobs"][-1]["state"] == "error"
        assert second["jobs"][:HISTORY + 1] == document["jobs"]
    finally:
        cluster.stop()


def test_json_prefix_keeps_finished_records_and_drops_them_when_one_changes():
    jobs = {i: p.JobInfo(id=i, commit=f"{i:040x}", branch="main", state="passed", finished_at=float(i))
            for i in range(1, 6)}
    jobs[4].state, jobs[4].finished_at = "running", None
    prefix = JsonPrefix(lambda j: j.state in p.FINAL_STATES)

    def as_json(records) -> list:
        return json.loads(msgspec.json.encode(records))

    assert as_json(prefix.array(jobs)) == as_json(list(jobs.values()))
    assert prefix.keys == {1, 2, 3}  # up to the first job still running

    jobs[4].state, jobs[4].finished_at = "failed", 4.0
    prefix.changed(4)  # not kept yet: nothing to drop
    jobs[6] = p.JobInfo(id=6, commit=f"{6:040x}", branch="main", state="queued")
    assert as_json(prefix.array(jobs)) == as_json(list(jobs.values()))
    assert prefix.keys == {1, 2, 3, 4, 5}

    jobs[2].state, jobs[2].finished_at = "cancelled", 9.0  # a kept job changes after all
    prefix.changed(2)
    assert prefix.keys == set()
    assert as_json(prefix.array(jobs)) == as_json(list(jobs.values()))
    assert prefix.keys == {1, 2, 3, 4, 5}

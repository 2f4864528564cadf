"""[skip ci] and cancel_superseded with a real `tuici serve`, observer and runner, on a real repository."""

from __future__ import annotations

import json

import pytest

from conftest import events, toml_command, tuici, wait_for


@pytest.fixture
def serve(repo, serve_factory):
    proc = serve_factory(repo, "--runners", "1")
    wait_for(lambda: any(e.get("kind") == "job.finished" for e in events(proc)), 60, message="the first job")
    return proc


def status(repo) -> dict:
    return json.loads(tuici("status", "--json", cwd=repo.path).stdout)


def jobs_of(repo, sha: str) -> list[dict]:
    return [j for j in status(repo)["jobs"] if j["commit"] == sha]


def seen(serve, sha: str) -> bool:
    return any(e.get("kind") == "commit.seen" and e["commit"]["sha"] == sha for e in events(serve))


def test_skip_ci_commits_get_no_job_and_show_as_skipped(repo, serve):
    body = repo.commit("Fix a typo in the docs\n\nNothing to test here.\n[skip ci]\n")
    subject = repo.commit("[CI Skip] reformat")
    tested = repo.commit("mentions skip ci without the brackets")
    wait_for(lambda: any(e.get("kind") == "job.finished" and e["job"]["commit"] == tested for e in events(serve)),
             60, message="the commit after them to be tested")
    commits = {c["sha"]: c for c in status(repo)["commits"]}
    assert commits[body]["skipped"] and commits[subject]["skipped"] and "skipped" not in commits[tested]
    assert jobs_of(repo, body) == jobs_of(repo, subject) == []
    skipped_tip = repo.commit("docs again [skip ci]")
    wait_for(lambda: seen(serve, skipped_tip), 30, message="the skipped tip to be seen")
    assert "skipped" in tuici("status", cwd=repo.path).stdout.split("runners")[0]  # main's tip: skipped
    waited = tuici("wait", cwd=repo.path, check=False)
    assert waited.returncode == 0 and "skipped" in waited.stdout
    rerun = tuici("rerun", body, cwd=repo.path)  # asked for: tested all the same
    assert "queued at the front" in rerun.stdout
    assert tuici("wait", body, cwd=repo.path, check=False).returncode == 0


def test_a_newer_commit_cancels_three_queued_ones_as_superseded(repo, serve, outside):
    """The runner is busy; three commits queue up; a fourth, whose config turns cancel_superseded on, cancels them.
    The running job is left to finish, and the newest is tested."""
    gate = outside / "gate"
    busy = repo.commit("busy", config=toml_command(f"while [ ! -e {gate} ]; do sleep 0.1; done"))
    wait_for(lambda: any(j["state"] == "running" for j in jobs_of(repo, busy)), 30, message="the busy job to start")
    queued = [repo.commit(f"queued {n}", config=toml_command(f"echo {n}")) for n in range(3)]
    wait_for(lambda: all(jobs_of(repo, sha) for sha in queued), 30, message="three queued jobs")
    newest = repo.commit("newest", config=toml_command("echo newest") + "cancel_superseded = true\n")

    def superseded() -> list[dict] | None:
        jobs = [j for sha in queued for j in jobs_of(repo, sha)]
        return jobs if all(j["state"] == "cancelled" for j in jobs) else None
    jobs = wait_for(superseded, 30, message="the three queued jobs to be cancelled")
    assert [j["error"] for j in jobs] == [f"superseded by {newest}"] * 3
    messages = [e.get("message") for e in events(serve) if e.get("kind") == "job.finished"
                and e["job"]["commit"] in queued]
    assert messages == [f"superseded by {newest}"] * 3
    gate.touch()
    assert tuici("wait", newest, cwd=repo.path, check=False).returncode == 0
    assert [j["state"] for j in jobs_of(repo, busy)] == ["passed"]


def test_a_deleted_branchs_queued_job_is_cancelled_when_its_config_says_so(repo, serve, outside):
    gate = outside / "gate"
    busy = repo.commit("busy", config=toml_command(f"while [ ! -e {gate} ]; do sleep 0.1; done"))
    wait_for(lambda: any(j["state"] == "running" for j in jobs_of(repo, busy)), 30, message="the busy job to start")
    repo.git("checkout", "-q", "-b", "feature")
    doomed = repo.commit("on feature", config=toml_command("echo feature") + "cancel_superseded = true\n")
    repo.git("checkout", "-q", "main")
    repo.git("checkout", "-q", "-b", "other")
    kept = repo.commit("on other", config=toml_command("echo other"))
    repo.git("checkout", "-q", "main")
    wait_for(lambda: jobs_of(repo, doomed) and jobs_of(repo, kept), 30, message="both branches' jobs")
    repo.git("branch", "-q", "-D", "feature", "other")
    job = wait_for(lambda: next((j for j in jobs_of(repo, doomed) if j["state"] == "cancelled"), None), 30,
                   message="the deleted branch's job to be cancelled")
    assert job["error"] == "branch feature was deleted"
    gate.touch()
    assert tuici("wait", kept, cwd=repo.path, check=False).returncode == 0  # without the setting: still tested

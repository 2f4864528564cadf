"""The observer against real repositories: branches, merges, force-pushes, odd states."""

from __future__ import annotations

import subprocess

from conftest import GitRepo, toml_command, wait_for
from tuici.observer import Source, plan


def shas(reports):
    return {r.branch: [c.sha for c in r.commits] for r in reports}


def test_first_start_reports_only_each_branch_tip(repo):
    repo.commit("two")
    repo.git("branch", "feature")
    reports, gone = plan(Source(str(repo.path)), {})
    assert shas(reports) == {"main": [repo.head()], "feature": [repo.head()]}
    assert gone == []


def test_every_new_commit_is_reported_oldest_first(repo):
    known = {"main": repo.head()}
    new = [repo.commit(f"c{i}") for i in range(5)]
    reports, _ = plan(Source(str(repo.path)), known)
    assert shas(reports) == {"main": new}
    assert reports[0].tip == new[-1]


def test_coalesce_reports_only_the_newest_per_branch(repo):
    repo.commit("coalescing", config=toml_command("true") + "coalesce = true\n")
    known = {"main": repo.head()}
    new = [repo.commit(f"c{i}") for i in range(3)]
    reports, _ = plan(Source(str(repo.path)), known)
    assert shas(reports) == {"main": [new[-1]]}


def test_branch_patterns_limit_what_is_watched(repo):
    repo.commit("patterns", config=toml_command("true") + "branches = ['main', 'release/*']\n")
    known = {"main": repo.head()}
    for branch in ("release/1.0", "scratch"):
        repo.git("checkout", "-q", "-b", branch, "main")
        repo.commit(f"on {branch}")
    repo.git("checkout", "-q", "main")
    reports, _ = plan(Source(str(repo.path)), known)
    assert set(shas(reports)) == {"release/1.0"}


def test_new_and_deleted_branches_merges_and_force_pushes(repo):
    base = repo.head()
    known = {"main": base}
    repo.git("checkout", "-q", "-b", "topic")
    t1 = repo.commit("topic 1")
    repo.git("checkout", "-q", "main")
    m1 = repo.commit("main 1")
    repo.git("merge", "-q", "--no-edit", "topic")
    merge = repo.head()
    reports, gone = plan(Source(str(repo.path)), known)
    got = shas(reports)
    assert got["topic"] == [t1]
    assert got["main"][-1] == merge and m1 in got["main"]
    known = {r.branch: r.tip for r in reports} | {"main": merge}

    # Force-push: main is rewritten; the vanished commits are simply not reported again.
    repo.git("reset", "-q", "--hard", base)
    rewritten = repo.commit("rewritten")
    repo.git("branch", "-D", "-q", "topic")
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")
    reports, gone = plan(Source(str(repo.path)), known)
    assert shas(reports) == {"main": [rewritten]}
    assert gone == ["topic"]


def test_branch_tips_read_from_the_ref_files_are_those_git_lists(repo):
    """Loose, packed, loose over packed, nested, symbolic; refs git would skip (bad names, not commits) too."""
    first = repo.head()
    for name in ("packed-only", "release/1.0", "shadowed"):
        repo.git("branch", name)
    repo.git("pack-refs", "--all")
    second = repo.commit("two")
    repo.git("branch", "-f", "shadowed", second)  # a loose ref now overrides its packed copy
    repo.git("branch", "deep/er/name", first)
    repo.git("symbolic-ref", "refs/heads/alias", "refs/heads/release/1.0")
    heads = repo.path / ".git" / "refs" / "heads"
    (heads / "tree").write_text(repo.head("HEAD^{tree}") + "\n")  # not a commit
    (heads / ".hidden").write_text(first + "\n")  # names git rejects
    (heads / "main.lock").write_text(first + "\n")
    (heads / "junk").write_text("not a sha\n")
    listed = {}
    out = repo.git("for-each-ref", "--format=%(refname)%00%(objectname)%00%(objecttype)", "refs/heads")
    for line in out.splitlines():
        ref, sha, kind = line.split("\0")
        if kind == "commit":
            listed[ref.removeprefix("refs/heads/")] = sha
    source = Source(str(repo.path))
    assert source.branches() == listed
    assert listed["shadowed"] == second and listed["alias"] == first and "tree" not in listed


def test_detached_head_and_an_empty_repository_do_not_crash(tmp_path, repo):
    empty = GitRepo(tmp_path / "empty")
    assert plan(Source(str(empty.path)), {}) == ([], [])
    repo.git("checkout", "-q", "--detach", "HEAD")
    repo.commit("detached")
    reports, _ = plan(Source(str(repo.path)), {"main": repo.head("main")})
    assert reports == []


def test_a_bad_observer_config_is_logged_and_every_branch_watched(repo, caplog):
    repo.commit("bad", config="branches = 'main'\n")
    source = Source(str(repo.path))
    assert source.config().watches("anything")
    assert "tuici.toml: key 'branches'" in caplog.text


def test_live_observer_handles_an_empty_repo_then_branches(tmp_path, cluster_factory):
    empty = GitRepo(tmp_path / "fresh")
    cluster = cluster_factory(empty)
    cluster.start_observer()
    cluster.start_runner("r1")
    first = empty.commit("first ever", config=toml_command("echo hi"))
    assert cluster.wait_job(first).state == "passed"
    empty.git("checkout", "-q", "-b", "side")
    side = empty.commit("on side")
    assert cluster.wait_job(side).branch == "side"
    empty.git("checkout", "-q", "main")
    empty.git("branch", "-D", "-q", "side")
    wait_for(lambda: "side" not in _tips(cluster), message="the deleted branch to be forgotten")


def _tips(cluster) -> set[str]:
    import sqlite3

    db = sqlite3.connect(cluster.state.db)
    try:
        return {b for (b,) in db.execute("SELECT branch FROM tips")}
    finally:
        db.close()


def test_poll_mode_fetches_a_remote_repository(tmp_path, repo, cluster):
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(bare)], check=True)
    cluster._spawn("observer", "observer", f"file://{bare}", "--dispatcher", cluster.address,
                   "--state", str(cluster.state.path), "--poll", "0.2")
    cluster.start_runner("r1")
    assert cluster.wait_job(repo.head()).state == "passed"
    sha = repo.commit("pushed later")
    repo.git("push", "-q", str(bare), "main")
    assert cluster.wait_job(sha).state == "passed"


def test_live_observer_catches_packed_branch_deletion_gc_and_force_push(repo, cluster):
    """Each of these changes different files: loose refs, only packed-refs, or loose refs after a rewrite."""
    cluster.start_observer()
    cluster.start_runner("r1")
    base = repo.head()
    assert cluster.wait_job(base).state == "passed"
    repo.git("branch", "packed")
    repo.git("pack-refs", "--all")  # moves every branch into packed-refs and deletes the loose files
    wait_for(lambda: "packed" in _tips(cluster), message="the new branch")
    repo.git("branch", "-D", "-q", "packed")  # now only packed-refs changes
    wait_for(lambda: "packed" not in _tips(cluster), message="the deleted packed branch to be forgotten")
    after_pack = repo.commit("after pack-refs")  # main is loose again
    assert cluster.wait_job(after_pack).state == "passed"
    repo.git("reset", "-q", "--hard", base)
    rewritten = repo.commit("rewritten history")
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")
    assert cluster.wait_job(rewritten).state == "passed"
    assert cluster.job_for(after_pack).state == "passed"  # tested once, before it vanished

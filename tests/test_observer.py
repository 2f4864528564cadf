"""The observer against real repositories: branches, merges, force-pushes, odd states."""

from __future__ import annotations

import os
import subprocess

import pytest

from tuici import config as cfg
from tuici.observer import Source, plan

from conftest import GitRepo, toml_command, wait_for


def shas(reports):
    return {r.branch: [c.sha for c in r.commits] for r in reports}


def queued(reports):
    """The commits of each report that get a job (the others are recorded for bisections only)."""
    return {r.branch: [c.sha for c in r.commits if c.sha not in r.untested] for r in reports}


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


def test_coalesce_queues_only_the_newest_per_branch_and_records_the_rest_for_bisections(repo):
    repo.commit("coalescing", config=toml_command("true") + "coalesce = true\n")
    known = {"main": repo.head()}
    new = [repo.commit(f"c{i}") for i in range(3)]
    reports, _ = plan(Source(str(repo.path)), known)
    assert shas(reports) == {"main": new}
    assert queued(reports) == {"main": [new[-1]]}


def test_first_parent_queues_the_merges_of_an_integration_branch_and_the_order_comes_with_them(repo):
    repo.commit("integration", config=toml_command("true") + "first_parent = true\norder = 'oldest-first'\n")
    known = {"main": repo.head()}
    merges, side = [], []
    for n in range(2):
        repo.git("checkout", "-q", "-b", f"topic{n}", "main")
        side += [repo.commit(f"topic {n} a"), repo.commit(f"topic {n} b")]
        repo.git("checkout", "-q", "main")
        direct = repo.commit(f"on main before merging topic {n}")  # the merge is not a fast-forward
        repo.git("merge", "-q", "--no-ff", "-m", f"merge topic {n}", f"topic{n}")
        merges += [direct, repo.head()]
    reports, _ = plan(Source(str(repo.path)), known)
    [report] = [r for r in reports if r.branch == "main"]
    assert set(shas(reports)["main"]) == set(merges + side)  # every new commit is recorded ...
    assert queued(reports)["main"] == merges  # ... and only the first-parent chain's are queued, oldest first
    assert report.order == "oldest-first"


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
    assert [g.branch for g in gone] == ["topic"]


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


def test_a_bad_observer_config_is_logged_once_and_every_branch_watched(repo, caplog):
    repo.commit("bad", config="branches = 'main'\n")
    repo.git("branch", "other")
    source = Source(str(repo.path))
    for _ in range(3):  # the observer wakes often; a commit's config is read (and its error logged) once
        assert {r.branch for r in plan(source, {})[0]} == {"main", "other"}
    assert caplog.text.count("tuici.toml: key 'branches'") == 1


# ---------------------------------------------------------------------- config: from commits, never the work tree


def commit_only(repo: GitRepo, name: str, text: str, message: str) -> str:
    """Commit one file, leaving whatever else the work tree has changed uncommitted."""
    (repo.path / name).write_text(text)
    repo.git("add", name)
    repo.git("commit", "-q", "-m", message)
    return repo.head()


def test_watched_branches_come_from_the_branch_head_names_else_main_or_master(repo):
    repo.commit("main only", config=toml_command("true") + "branches = ['main']\n")
    repo.git("checkout", "-q", "-b", "wide")
    repo.commit("every branch", config=toml_command("true") + "branches = ['*']\n")
    repo.git("branch", "other")
    source = Source(str(repo.path))

    def watched() -> set[str]:
        return {r.branch for r in plan(source, {})[0]}
    assert watched() == {"main", "other", "wide"}  # HEAD names wide
    repo.git("checkout", "-q", "--detach", "HEAD")
    assert watched() == {"main"}  # detached: main's config
    repo.git("symbolic-ref", "HEAD", "refs/heads/unborn")
    assert watched() == {"main"}  # unborn: main's config
    repo.git("branch", "-m", "main", "master")
    assert watched() == set()  # master's config (it watches only 'main')
    repo.git("branch", "-m", "master", "trunk")
    assert watched() == {"trunk", "other", "wide"}  # neither: the defaults


def test_coalesce_is_read_from_each_branch_tip(repo):
    base = repo.head()
    repo.git("checkout", "-q", "-b", "feature")
    feature = [repo.commit("coalesce here", config=toml_command("true") + "coalesce = true\n")]
    feature += [repo.commit(f"f{i}") for i in range(2)]
    repo.git("checkout", "-q", "main")
    main = [repo.commit(f"m{i}") for i in range(3)]
    reports, _ = plan(Source(str(repo.path)), {"main": base, "feature": base})
    assert queued(reports) == {"main": main, "feature": [feature[-1]]}


def test_uncommitted_config_edits_change_nothing(repo, cluster):
    commit_only(repo, "tuici.toml", toml_command("echo ok") + "branches = ['main']\n", "watch main")
    (repo.path / "tuici.toml").write_text("branches = ['nothing']\n")
    cluster.start_observer()
    cluster.start_runner("r1")
    assert cluster.wait_job(repo.head()).state == "passed"
    sha = commit_only(repo, "more.txt", "more\n", "more")
    assert cluster.wait_job(sha).state == "passed"
    assert repo.git("status", "--porcelain") == "M tuici.toml"  # still uncommitted: the commits were tested anyway


def test_a_symlinked_committed_config_is_an_error_and_the_observer_goes_on_with_the_defaults(repo, cluster):
    (repo.path / "real.toml").write_text("command = 'true'\nbranches = ['nothing']\n")  # followed: nothing watched
    (repo.path / "tuici.toml").unlink()
    os.symlink("real.toml", repo.path / "tuici.toml")
    linked = repo.commit("config through a link")
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(linked)  # watched: the defaults watch every branch
    wait_for(lambda: "tuici.toml: is a symbolic link" in cluster.component_log("observer"), message="the error")
    later = repo.commit("later")
    cluster.wait_job(later)
    assert cluster.procs["observer"].poll() is None


def test_read_committed_takes_regular_files_only_and_bounded(repo):
    (repo.path / "tuici.toml").unlink()
    os.symlink("/etc/passwd", repo.path / "tuici.toml")
    (repo.path / "pyproject.toml").mkdir()
    (repo.path / "pyproject.toml" / "x").write_text("x")
    (repo.path / "big.toml").write_text("#" * (cfg.MAX_CONFIG_BYTES + 1))
    (repo.path / "ok.toml").write_text("command = 'true'\n")
    repo.commit("odd entries")
    (repo.path / "ok.toml").write_text("command = 'uncommitted'\n")
    read = cfg.read_committed(Source(str(repo.path)).repo, repo.head())
    assert read("ok.toml") == b"command = 'true'\n" and read("absent.toml") is None
    for name, problem in (("tuici.toml", "is a symbolic link"), ("pyproject.toml", "is a tree"),
                          ("big.toml", f"{cfg.MAX_CONFIG_BYTES + 1} bytes, more than")):
        with pytest.raises(cfg.ConfigError, match=f"{name}: {problem}"):
            read(name)
    with pytest.raises(cfg.ConfigError, match="git cannot read the tree"):
        cfg.read_committed(Source(str(repo.path)).repo, "0" * 40)


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


def test_a_known_tip_a_gc_pruned_from_a_pack_is_not_excluded(repo):
    """git's long-running cat-file keeps the packs it opened: after a gc deleted one, it still finds the commits
    only that pack held, and `git log --not <one of them>` fails. The observer crashed on that, once."""
    source = Source(str(repo.path))
    base = repo.head()
    dropped = repo.commit("dropped later")
    repo.git("gc", "-q")  # into a pack
    assert shas(plan(source, {"main": base})[0]) == {"main": [dropped]}  # the cat-file has opened the pack
    repo.git("reset", "-q", "--hard", base)
    rewritten = repo.commit("rewritten")
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")  # a new pack without `dropped`; the old one deleted
    assert shas(plan(source, {"main": dropped})[0]) == {"main": [rewritten]}


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

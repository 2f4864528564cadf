"""`tuici try`: the work tree as it is, tested before it is committed, with real processes and repositories."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys

from tuici.runner.workspace import Workspace
from tuici.trying import TRY_REFS, prune_try_refs, snapshot

from conftest import _env, events, job_processes, toml_command, tuici, tuici_processes, wait_for

# The tree the test command checks: what is staged, what is only in the work tree, what is untracked, what was
# deleted (with and without `git rm`), and that what .gitignore names stays out.
CHECK_TREE = ('test "$(cat staged.txt)" = "staged" && test "$(cat unstaged.txt)" = "edited" '
              '&& test "$(cat both.txt)" = "staged then edited" && test -f untracked/new.txt '
              '&& test ! -e removed.txt && test ! -e rm-ed.txt && test ! -e ignored.log && echo "tree as it is"')


def dirty(repo) -> None:
    """Staged, unstaged, staged-then-edited, untracked, deleted and `git rm`-ed files, and an ignored one."""
    repo.commit("base", files={"staged.txt": "old\n", "unstaged.txt": "old\n", "both.txt": "old\n",
                               "removed.txt": "x\n", "rm-ed.txt": "x\n", ".gitignore": "*.log\n"},
                config=toml_command(CHECK_TREE))
    (repo.path / "staged.txt").write_text("staged\n")
    (repo.path / "both.txt").write_text("staged\n")
    repo.git("add", "staged.txt", "both.txt")
    (repo.path / "both.txt").write_text("staged then edited\n")
    (repo.path / "unstaged.txt").write_text("edited\n")
    (repo.path / "untracked").mkdir()
    (repo.path / "untracked" / "new.txt").write_text("new\n")
    (repo.path / "removed.txt").unlink()
    repo.git("rm", "-q", "rm-ed.txt")
    (repo.path / "ignored.log").write_text("ignored\n")
    repo.git("stash", "list")


def picture(repo) -> dict:
    """What `try` must leave as it was: status (untracked and ignored files too), every ref outside refs/tuici/,
    the stash, and the index file byte for byte."""
    refs = [line for line in repo.git("for-each-ref", "--format=%(refname) %(objectname)").splitlines()
            if not line.startswith("refs/tuici/")]
    return {"status": repo.git("status", "--porcelain=v2", "--branch", "--untracked-files=all", "--ignored"),
            "refs": refs, "head": repo.git("symbolic-ref", "HEAD"), "stash": repo.git("stash", "list"),
            "index": hashlib.sha256((repo.path / ".git" / "index").read_bytes()).hexdigest()}


def try_refs(repo) -> list[str]:
    return repo.git("for-each-ref", "--format=%(refname)", TRY_REFS).splitlines()


def test_try_on_a_dirty_tree_tests_the_tree_as_it_is_and_leaves_status_and_refs_as_they_were(repo):
    """No dispatcher runs: try starts its own, and stops every process of it when the try ends."""
    dirty(repo)
    repo.git("status")  # git refreshes the index's stat cache here, not during the try
    before = picture(repo)
    done = tuici("try", cwd=repo.path, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tree as it is" in done.stdout and "passed" in done.stderr
    assert "starting one, with 1 runner" in done.stderr
    assert picture(repo) == before
    assert tuici_processes() == []

    [ref] = try_refs(repo)
    sha = repo.head(ref)
    assert ref == TRY_REFS + sha
    assert repo.git("rev-parse", f"{sha}^") == repo.head()  # on top of HEAD, which no branch moved to
    assert repo.git("branch", "--contains", sha) == ""
    listed = set(repo.git("ls-tree", "-r", "--name-only", sha).splitlines())
    assert {"untracked/new.txt", "staged.txt", "both.txt"} <= listed
    assert not {"removed.txt", "rm-ed.txt", "ignored.log"} & listed
    assert repo.git("show", f"{sha}:both.txt") == "staged then edited"


def test_a_failing_tree_exits_1_and_a_fixed_one_0(repo):
    repo.commit("needs a file", config=toml_command("test -f fixed.txt"))
    failing = tuici("try", cwd=repo.path, check=False)
    assert failing.returncode == 1, failing.stderr
    assert "failed" in failing.stderr
    (repo.path / "fixed.txt").write_text("now\n")
    assert tuici("try", cwd=repo.path, check=False).returncode == 0
    assert len(try_refs(repo)) == 2  # one snapshot each


def test_try_uses_the_running_dispatcher_and_goes_ahead_of_queued_commits(repo, serve_factory, outside):
    """One runner, busy with a commit that waits on a gate; two more commits queued. The try runs next."""
    gate = outside / "gate"
    serve = serve_factory(repo, "--runners", "1")
    wait_for(lambda: any(e.get("kind") == "job.finished" for e in events(serve)), 60, message="the first job")
    busy = repo.commit("busy", config=toml_command(f"while [ ! -e {gate} ]; do sleep 0.1; done"))
    wait_for(lambda: any(e.get("kind") == "job.started" and e["job"]["commit"] == busy for e in events(serve)), 60,
             message="the busy commit to start")  # else the newer ones, reported with it, would go first
    queued = [repo.commit(f"queued {n}", config=toml_command(f"echo queued {n}")) for n in range(2)]
    # Each once at least (newest first, the older one is queued again behind the newer: counted once).
    wait_for(lambda: {e["job"]["commit"] for e in events(serve) if e.get("kind") == "job.queued"} >= set(queued),
             30, message="both commits to be queued")
    (repo.path / "tuici.toml").write_text(toml_command("echo tried"))
    trying = subprocess.Popen([sys.executable, "-m", "tuici", "try", str(repo.path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True)
    try:
        wait_for(lambda: any(e.get("kind") == "job.queued" and e["job"].get("kind") == "try" for e in events(serve)),
                 30, message="the try to be queued")
        gate.touch()
        out, err = trying.communicate(timeout=60)
    finally:
        if trying.poll() is None:
            trying.kill()
            trying.wait()
    assert trying.returncode == 0, err
    assert "tried" in out and "starting one" not in err
    started = [e["job"] for e in events(serve) if e.get("kind") == "job.started"]
    order = [job["commit"] for job in started]
    try_job = next(job for job in started if job.get("kind") == "try")
    assert order.index(try_job["commit"]) == order.index(busy) + 1  # right after busy: before either queued one
    status = json.loads(tuici("status", "--json", cwd=repo.path).stdout)
    tried = next(j for j in status["jobs"] if j["id"] == try_job["id"])
    assert (tried["kind"], tried["branch"], tried["state"]) == ("try", "main", "passed")
    assert serve.poll() is None  # serve's engine is not try's to stop


def test_ctrl_c_cancels_the_job_and_stops_the_private_engine(repo):
    (repo.path / "tuici.toml").write_text(toml_command("echo started; sleep 300", timeout=600))
    trying = subprocess.Popen([sys.executable, "-m", "tuici", "try", str(repo.path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True)
    try:
        assert trying.stdout is not None
        for line in trying.stdout:  # the job's output, streamed as it runs
            if line.startswith("started"):
                break
        sha = repo.head(try_refs(repo)[0])
        assert job_processes(sha)
        trying.send_signal(signal.SIGINT)
        out, err = trying.communicate(timeout=60)
    finally:
        if trying.poll() is None:
            trying.kill()
            trying.wait()
    assert trying.returncode == 2, err
    assert "cancelling job" in err and "cancelled" in err
    assert tuici_processes() == [] and job_processes(sha) == []


def test_the_runner_checks_out_a_commit_only_a_try_ref_points_to(repo, tmp_path):
    """Through the repository's objects it borrows, and by fetching, for a clone that does not borrow them."""
    (repo.path / "only-in-the-try.txt").write_text("tried\n")
    sha = snapshot(repo.path, repo.state).commit.sha
    assert repo.git("for-each-ref", "--contains", sha, "--format=%(refname)") == TRY_REFS + sha
    for name, url in (("borrowing", str(repo.path)), ("fetching", f"file://{repo.path}")):
        workspace = Workspace(tmp_path / name)
        checkout = workspace.prepare(url, sha, gitfile=True)
        assert (checkout / "only-in-the-try.txt").read_text() == "tried\n", name
        workspace.release()


def test_old_try_refs_are_pruned_once_their_result_is_older_than_the_retention(repo):
    shas = []
    for n in range(4):
        (repo.path / "f.txt").write_text(f"{n}\n")
        done = tuici("try", cwd=repo.path, check=False)
        assert done.returncode == 0, done.stderr
        shas.append(next(repo.head(ref) for ref in try_refs(repo) if repo.head(ref) not in shas))
    old, recent, running, unknown = shas
    removed = prune_try_refs(repo.path, {old: 1000.0, recent: 3000.0, running: None}, cutoff=2000.0)
    assert removed == [TRY_REFS + old]
    assert sorted(try_refs(repo)) == sorted(TRY_REFS + sha for sha in (recent, running, unknown))
    # A try no job knows of is as old as its commit.
    assert prune_try_refs(repo.path, {}, cutoff=0.0) == []
    assert len(prune_try_refs(repo.path, {running: None}, cutoff=4e9)) == 2
    assert try_refs(repo) == [TRY_REFS + running]

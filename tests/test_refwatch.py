"""Watching refs against a real repository and real git commands: inotify read by a thread (Linux), and
watchfiles (elsewhere, and where inotify cannot be had)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from tuici.refwatch import InotifyWatcher, WatchfilesWatcher, watch_refs

from conftest import wait_for


class Calls:
    def __init__(self) -> None:
        self.changes = 0
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def change(self) -> None:
        with self.lock:
            self.changes += 1

    def error(self, exc: BaseException) -> None:
        self.errors.append(exc)

    def after(self, action, what: str) -> None:
        """Do ``action`` and wait until it was noticed."""
        before = self.changes
        action()
        wait_for(lambda: self.changes > before, timeout=15, message=what)
        assert not self.errors


@pytest.fixture(params=["inotify", "watchfiles", "watchfiles-polling"])
def watched(request, repo):
    """Each way of watching: inotify (Linux), watchfiles (elsewhere), watchfiles polling (Linux without inotify)."""
    if request.param == "inotify" and not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux's")
    calls = Calls()
    git_dir = repo.path / ".git"
    watcher: InotifyWatcher | WatchfilesWatcher
    if request.param == "inotify":
        watcher = InotifyWatcher(git_dir, calls.change, calls.error)
    else:
        watcher = WatchfilesWatcher(git_dir, calls.change, calls.error, force_polling=request.param.endswith("polling"))
    watcher.start()
    try:
        yield repo, calls
    finally:
        watcher.stop()


def test_a_commit_is_noticed(watched):
    repo, calls = watched
    calls.after(lambda: repo.commit("one"), "the commit")
    calls.after(lambda: repo.commit("two"), "the next commit")


def test_branches_created_and_deleted_are_noticed_also_in_new_directories(watched):
    repo, calls = watched
    calls.after(lambda: repo.git("branch", "feature/deep/one"), "a branch in directories git made for it")
    calls.after(lambda: repo.git("branch", "feature/deep/two"), "another branch in the new directory")
    repo.git("checkout", "-q", "feature/deep/two")
    calls.after(lambda: repo.commit("on two"), "a commit on a branch in the new directory")
    repo.git("checkout", "-q", "main")
    calls.after(lambda: repo.git("branch", "-D", "-q", "feature/deep/one"), "the deleted branch")
    calls.after(lambda: repo.git("branch", "-D", "-q", "feature/deep/two"), "the other deleted branch")
    calls.after(lambda: repo.git("branch", "feature/deep/three"), "a branch in the directory made again")


def test_packed_refs_are_watched(watched):
    repo, calls = watched
    repo.git("branch", "packed")
    calls.after(lambda: repo.git("pack-refs", "--all"), "pack-refs")
    assert not (repo.path / ".git" / "refs" / "heads" / "packed").exists()
    calls.after(lambda: repo.git("branch", "-D", "-q", "packed"), "a branch deleted from packed-refs alone")
    calls.after(lambda: repo.commit("loose again"), "a commit on a packed branch")
    calls.after(lambda: repo.git("checkout", "-q", "--detach"), "HEAD detached")


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_the_inotify_thread_ends_at_stop_and_lets_go_of_its_descriptors(repo):
    calls = Calls()
    before = _fds()
    watcher = watch_refs(repo.path / ".git", calls.change, calls.error)
    assert isinstance(watcher, InotifyWatcher)  # on Linux, inotify is used
    assert watcher.thread.is_alive()
    calls.after(lambda: repo.commit("seen"), "the commit")
    watcher.stop()
    assert not watcher.thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("inotify")]
    assert _fds() == before
    watcher.stop()  # a second stop is harmless
    assert not calls.errors


def test_a_missing_git_dir_is_an_error_not_a_blind_watcher(tmp_path):
    with pytest.raises(OSError):
        watch_refs(tmp_path / "nothing" / ".git", lambda: None, lambda exc: None)


def test_an_observer_told_to_stop_ends_with_its_watcher_and_leaves_no_process_behind(repo, cluster):
    import signal

    import psutil

    observer = cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    assert cluster.wait_job(repo.commit("seen")).state == "passed"
    helpers = psutil.Process(observer.pid).children(recursive=True)  # git cat-file, kept running
    assert helpers
    observer.send_signal(signal.SIGTERM)
    assert observer.wait(20) == 0
    for helper in helpers:
        wait_for(lambda helper=helper: not helper.is_running() or helper.status() == psutil.STATUS_ZOMBIE,
                 message=f"the observer's helper {helper.pid} to end")

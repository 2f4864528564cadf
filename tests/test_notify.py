"""Telling the user a branch broke or was fixed: the notify_command hook the dispatcher runs, and serve's desktop
notification, with real processes, a real repository and real hook scripts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psutil

from tuici import wire as p
from tuici.notify import Notification, notification_for, osc_notification

from conftest import GitRepo, events, toml_command, tuici, wait_for


def hook_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def local_config(repo: GitRepo, text: str) -> None:
    """The repository's own settings, as a user writes them (never committed)."""
    repo.state.ensure()
    repo.state.local_config.write_text(text)


def read_env(path: Path) -> dict[str, str]:
    """The TUICI_* variables a hook saw, but those every process of the test session has."""
    env = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: value for name, value in env.items() if name not in ("TUICI_CACHE_DIR", "TUICI_SUPERVISOR")}


def test_the_hook_runs_with_the_events_variables_when_a_branch_breaks_and_when_it_is_fixed(tmp_path, cluster_factory):
    repo = GitRepo(tmp_path / "repo")
    repo.commit("passing", config=toml_command("echo ok"))
    out = tmp_path / "hook-out"
    out.mkdir()
    hook = hook_script(tmp_path / "hook.sh", f'env | grep "^TUICI_" | sort > "{out}/$TUICI_EVENT-$TUICI_JOB_ID.env"\n'
                                             'echo "hook saw $TUICI_EVENT"\n')
    local_config(repo, f'notify_command = ["{hook}"]\n')
    cluster = cluster_factory(repo)
    cluster.start_runner("r1")
    cluster.start_observer()
    cluster.wait_job(repo.head())
    broken = repo.commit("Break the parser", config=toml_command("echo 'test_parse FAILED'; exit 1"))
    assert cluster.wait_job(broken).state == "failed"
    fixed = repo.commit("Fix the parser", config=toml_command("echo ok"))
    fixed_job = cluster.wait_job(fixed)

    broken_job = cluster.job_for(broken)
    env = read_env(wait_for(lambda: next(out.glob("broken-*.env"), None), 30, message="the broken hook's file"))
    assert env == {
        "TUICI_EVENT": "broken", "TUICI_BRANCH": "main", "TUICI_COMMIT": broken, "TUICI_JOB_ID": str(broken_job.id),
        "TUICI_STATE": "failed", "TUICI_SUBJECT": "Break the parser", "TUICI_AUTHOR": "Dev",
        "TUICI_TITLE": "main is broken", "TUICI_REPO": str(repo.path),
        "TUICI_LOG": str(cluster.state.job_log(broken_job.id)),
        "TUICI_DURATION": env["TUICI_DURATION"],
        "TUICI_MESSAGE": f"main fails at {broken[:10]} (job {broken_job.id}); it passed at {repo.head('HEAD~2')[:10]} "
                         f"(job {broken_job.id - 1})",
    }
    assert float(env["TUICI_DURATION"]) > 0
    assert "test_parse FAILED" in Path(env["TUICI_LOG"]).read_text()
    env = read_env(wait_for(lambda: next(out.glob("fixed-*.env"), None), 30, message="the fixed hook's file"))
    assert (env["TUICI_EVENT"], env["TUICI_COMMIT"], env["TUICI_JOB_ID"], env["TUICI_STATE"], env["TUICI_SUBJECT"]) == (
        "fixed", fixed, str(fixed_job.id), "passed", "Fix the parser")
    assert sorted(path.name for path in out.iterdir()) == [f"broken-{broken_job.id}.env", f"fixed-{fixed_job.id}.env"]
    assert "TUICI_TOKEN" not in env and cluster.state.token() not in (out / f"fixed-{fixed_job.id}.env").read_text()
    wait_for(lambda: "hook saw fixed" in cluster.component_log("dispatcher"), message="the hook's output in the log")


def test_a_failing_or_hanging_hook_is_a_warning_and_is_killed_after_its_timeout(tmp_path, cluster_factory):
    repo = GitRepo(tmp_path / "repo")
    repo.commit("passing", config=toml_command("echo ok"))
    pids = tmp_path / "hook.pids"
    hook = hook_script(tmp_path / "hook.sh", f'echo $$ >> "{pids}"\n'
                                             'if [ "$TUICI_EVENT" = broken ]; then\n'
                                             '  echo "cannot reach chat" >&2; exit 3\n'
                                             'fi\n'
                                             'sleep 300\n')
    local_config(repo, f'notify_command = "{hook}"\nnotify_timeout = 1\n')
    cluster = cluster_factory(repo)
    cluster.start_runner("r1")
    cluster.start_observer()
    cluster.wait_job(repo.head())
    cluster.wait_job(repo.commit("Break", config=toml_command("exit 1")))
    wait_for(lambda: "exited with 3" in cluster.component_log("dispatcher"), 30, message="the failing hook's warning")
    assert "notify_command (main is broken): cannot reach chat" in cluster.component_log("dispatcher")
    cluster.wait_job(repo.commit("Fix", config=toml_command("echo ok")))
    wait_for(lambda: "still running after 1 s" in cluster.component_log("dispatcher"), 30,
             message="the hanging hook to be killed")
    hanging = int(pids.read_text().split()[-1])
    wait_for(lambda: not psutil.pid_exists(hanging) or psutil.Process(hanging).status() == psutil.STATUS_ZOMBIE,
             10, message="the hanging hook's process to be gone")
    assert cluster.status().runners  # the dispatcher serves on
    later = repo.commit("Break again", config=toml_command("exit 1"))
    assert cluster.wait_job(later).state == "failed"


def test_a_bad_notify_command_names_the_file_and_the_key_and_nothing_runs(tmp_path, cluster_factory):
    repo = GitRepo(tmp_path / "repo")
    repo.commit("passing", config=toml_command("echo ok"))
    local_config(repo, "notify_command = []\n")
    cluster = cluster_factory(repo)
    wait_for(lambda: "config.toml: key 'notify_command': must not be an empty list" in
             cluster.component_log("dispatcher"), message="the error")
    assert "retention and notify_command are off" in cluster.component_log("dispatcher")
    assert "(retention off: .git/tuici/config.toml has a mistake" in tuici("status", cwd=repo.path).stdout
    gc = tuici("gc", cwd=repo.path, check=False)
    assert gc.returncode == 1 and "config.toml is not valid" in gc.stdout


def test_serve_shows_a_desktop_notification_with_notify_send(tmp_path, serve_factory):
    """serve's output is not a terminal here: it calls notify-send (a stand-in on PATH that records its arguments)."""
    repo = GitRepo(tmp_path / "repo")
    repo.commit("passing", config=toml_command("echo ok"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "notify-send.calls"
    hook_script(bin_dir / "notify-send", f'printf "%s|" "$@" >> "{calls}"; echo >> "{calls}"\n')
    serve = serve_factory(repo, "--runners", "1", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    wait_for(lambda: any(e.get("kind") == "job.finished" for e in events(serve)), 60, message="the first job")
    broken = repo.commit("Break the build", config=toml_command("exit 1"))
    wait_for(lambda: any(e.get("kind") == "branch.broken" for e in events(serve)), 60, message="branch.broken")
    line = wait_for(lambda: calls.exists() and calls.read_text().strip(), 20, message="notify-send to be called")
    assert line.startswith("--app-name=tuici|tuici: main is broken|")
    assert f"{broken[:10]} Break the build (failed" in line


def test_notify_false_turns_the_desktop_notification_off(tmp_path, serve_factory):
    repo = GitRepo(tmp_path / "repo")
    repo.commit("passing", config=toml_command("echo ok"))
    local_config(repo, "notify = false\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "notify-send.calls"
    hook_script(bin_dir / "notify-send", f'echo called >> "{calls}"\n')
    serve = serve_factory(repo, "--runners", "1", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    wait_for(lambda: any(e.get("kind") == "job.finished" for e in events(serve)), 60, message="the first job")
    repo.commit("Break the build", config=toml_command("exit 1"))
    wait_for(lambda: any(e.get("kind") == "branch.broken" for e in events(serve)), 60, message="branch.broken")
    # The event is printed before any notification would be started; give one every chance to run.
    done = repo.commit("after")
    wait_for(lambda: any(e.get("kind") == "job.finished" and e["job"]["commit"] == done for e in events(serve)), 60)
    assert not calls.exists()


def test_the_terminal_notification_is_one_escape_sequence_with_nothing_of_the_commit_that_could_end_it():
    job = p.JobInfo(id=7, commit="ab" * 20, branch="main", state="failed", failed=2)
    event = p.Event(seq=1, ts=0.0, kind="branch.broken", job=job, message="main fails",
                    commit=p.CommitInfo(sha="ab" * 20, branch="main", subject="evil\x07\x1b]0;title\x07; rm"))
    notification = notification_for(event)
    assert isinstance(notification, Notification) and notification.kind == "broken"
    sequence = osc_notification(notification, env={})
    assert sequence.startswith("\x1b]777;notify;tuici: main is broken;") and sequence.endswith("\x07")
    assert sequence.count("\x07") == 1 and sequence.count("\x1b") == 1 and sequence.count(";") == 3
    assert osc_notification(notification, env={"TERM_PROGRAM": "iTerm.app"}).startswith("\x1b]9;tuici: main is broken")
    assert notification_for(p.Event(seq=2, ts=0.0, kind="job.finished", job=job)) is None

"""Import hygiene: the one-shot commands stay quick because they load only what they need.

`tuici status` (and log, rerun, cancel, wait, tests, history, flaky) is run by scripts and hooks, often in a loop:
Textual, GitPython, asyncio and psutil would add ~150 ms to every call. The lazy imports that keep them out are
easy to break without noticing; this test notices.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import _env, wait_for

HEAVY = ("textual", "git", "asyncio", "psutil", "watchfiles", "uv")
# What the control center never draws with: GitPython and watchfiles are the runners' and the observer's (their
# processes), Pygments would be syntax highlighting. Each would add to the time before its first frame.
NOT_DRAWN_WITH = ("git", "gitdb", "watchfiles", "uv", "pygments")

@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["status", "--exit-status"], ["log", "1"],
                                     ["log", "1", "-f"], ["rerun", "HEAD"], ["cancel", "1"], ["wait", "1"],
                                     ["wait", "HEAD", "--timeout", "1"], ["tests", "1"], ["tests", "1", "--json"],
                                     ["history", "test_x"], ["flaky"], ["flaky", "--json"]])
def test_one_shot_commands_load_no_heavy_module(repo, cluster, command):
    """Against a running dispatcher, so that each command goes all the way (a reply, or the dispatcher's no)."""
    # -X importtime names every module as it is imported, on stderr, even when the command ends with os._exit.
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "tuici", *command, str(repo.path)],
                          capture_output=True, text=True, env=_env(), timeout=60)
    loaded = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in done.stderr.splitlines()
              if line.startswith("import time:") and "|" in line}
    assert "tuici" in loaded and "msgspec" in loaded, done.stderr[-2000:]  # it did decode a reply
    assert not loaded & set(HEAVY), f"{command} loaded {sorted(loaded & set(HEAVY))}"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_control_center_loads_nothing_it_does_not_draw_with(repo, tmp_path):
    """The real `tuici` in a terminal, started, drawn and quit; the modules it loaded are written as it exits."""
    from test_ui_tmux import control_center, screen

    loaded = tmp_path / "modules.txt"
    record = (f"import atexit, runpy, sys; atexit.register(lambda: open({str(loaded)!r}, 'w').write("
              "' '.join({name.split('.')[0] for name in sys.modules}))); sys.argv[0] = 'tuici'; "
              "runpy.run_module('tuici', run_name='__main__', alter_sys=True)")
    with control_center(repo, tmp_path, ("-c", record)) as session:
        # the job done: q then quits without asking
        wait_for(lambda: "✔ passed" in screen(session), 30, interval=0.2, message="the commit's job to pass")
    modules = set(wait_for(lambda: loaded.exists() and loaded.read_text().split(), 20, message="the module list"))
    assert {"tuici", "textual", "msgspec"} <= modules
    assert not modules & set(NOT_DRAWN_WITH), f"the control center loaded {sorted(modules & set(NOT_DRAWN_WITH))}"

"""Import hygiene: the one-shot commands stay quick because they load only what they need.

`tuici status` (and log, rerun, cancel, wait, tests, history, flaky) is run by scripts and hooks, often in a loop:
Textual, GitPython, asyncio and psutil would add ~150 ms to every call. The lazy imports that keep them out are
easy to break without noticing; this test notices.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import _env

HEAVY = ("textual", "git", "asyncio", "psutil", "watchfiles", "uv")

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

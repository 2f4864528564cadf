"""`tuici [REPO]` and `tuici demo`: start the engine, then open the control center on it.

The engine's processes are started before Textual is imported: the dispatcher then starts and loads its
history (10,000 jobs) while the app is still loading (~0.5 s), instead of after it. This module imports
nothing from Textual for that reason.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Iterable

from .. import config as cfg
from .. import localconfig
from ..errors import CommandError, ConfigError
from ..statedir import StateDir, find_git_dir
from ..supervisor import kill_descendants
from .backend import LiveBackend


def config_problem(top: Path) -> str | None:
    """What is wrong with the work tree's tuici config, if anything: a heads-up before it is committed (jobs
    read the config committed with their commit, and a commit with this one would end in error)."""
    def read(name: str) -> bytes | None:
        path = top / name
        return path.read_bytes() if path.is_file() else None
    try:
        cfg.load(read)
    except cfg.ConfigError as exc:
        return f"{exc}. Jobs of commits with this config end in error."
    except OSError as exc:
        return f"Cannot read the config: {exc}"
    return None


def run_app(repo: str, runners: int, theme: str | None, sandbox: str = "auto") -> None:
    """`tuici [REPO]`: open the control center on REPO (``NotARepository``, ``CommandError`` before it opens)."""
    top, git_dir = find_git_dir(repo)
    if runners < 0:
        raise CommandError("--runners must be 0 or more")
    warnings = [problem] if (problem := config_problem(top)) else []
    state = StateDir.in_git_dir(git_dir)
    try:
        bell = localconfig.load(state).notify
    except ConfigError as exc:
        warnings.append(f"{exc}. Retention and notify_command are off until it is fixed.")
        bell = True
    backend = LiveBackend(top, state, runners, runner_args=["--sandbox", sandbox])
    open_control_center(backend, theme, warnings, bell=bell)


def open_control_center(backend: LiveBackend, theme: str | None, warnings: Iterable[str] = (),
                        bell: bool = True) -> None:
    """Launch ``backend``'s engine, then run the app on it until it quits; nothing it started outlives it."""
    async def run() -> None:
        try:
            await backend.launch()
            from .app import ControlCenter  # the long import, while the engine starts

            await ControlCenter(backend, theme=theme, warnings=warnings, bell=bell).run_async()
        finally:
            await backend.stop()  # the app stops it when it quits; this is for a failure before or in it

    # No cyclic collection until the first frame is up (the app then freezes the heap and turns it back on):
    # its passes over everything that start-up imports and builds cost ~25 ms of CPU before that frame.
    gc.disable()
    try:
        asyncio.run(run())
    finally:
        kill_descendants()  # should the app have died mid-way, its processes do not outlive it

"""`tuici [REPO]` and `tuici demo`: start the engine, then open the control center on it.

The engine's processes are started before Textual is imported: the dispatcher then starts and loads its
history (10,000 jobs) while the app is still loading (~0.5 s), instead of after it. This module imports
nothing from Textual for that reason.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterable

from .. import config as cfg
from ..errors import CommandError
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
    problem = config_problem(top)
    backend = LiveBackend(top, StateDir.in_git_dir(git_dir), runners, runner_args=["--sandbox", sandbox])
    open_control_center(backend, theme, [problem] if problem else [])


def open_control_center(backend: LiveBackend, theme: str | None, warnings: Iterable[str] = ()) -> None:
    """Launch ``backend``'s engine, then run the app on it until it quits; nothing it started outlives it."""
    async def run() -> None:
        try:
            await backend.launch()
            from .app import ControlCenter  # the long import, while the engine starts

            await ControlCenter(backend, theme=theme, warnings=warnings).run_async()
        finally:
            await backend.stop()  # the app stops it when it quits; this is for a failure before or in it

    try:
        asyncio.run(run())
    finally:
        kill_descendants()  # should the app have died mid-way, its processes do not outlive it

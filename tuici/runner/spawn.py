"""Starting a job's command from a thread of its own, which stays the command's parent until it exits.

Python's subprocess forks the whole runner (its page tables, the fork handlers, Python running in the child)
when a function must run in the child before exec; without one it uses vfork: 2 ms less per job, in wall time
and in CPU. What used to run there:

* Landlock's scope (the sandbox's): per thread in Linux, so it is set on the starting thread instead, which the
  child inherits; no other thread of the runner is touched.
* the parent-death signal, so that the command dies with the runner: bwrap sets its own (``--die-with-parent``,
  which also takes the sandbox's processes with it); a command without a sandbox has it set by util-linux's
  ``setpriv --pdeathsig``, which then becomes the command. Where there is no such setpriv, the child runs
  ``die_with_parent`` (and is forked).

The thread waits for the command and reaps it; it must outlive it anyway: Linux sends the parent-death signal
when the parent *thread* ends.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..procs import die_with_parent
from . import landlock


@dataclass
class Started:
    pid: int
    output: asyncio.StreamReader  # stdout and stderr
    exited: asyncio.Future[int]  # the exit code, as soon as it exits (not once its output is closed)
    pipe: asyncio.ReadTransport

    def close(self) -> None:
        """Let go of the output pipe (what the command left running may still hold it open)."""
        self.pipe.close()


def find_setpriv() -> str | None:
    """util-linux's setpriv, if it can set the parent-death signal (since 2.33, 2018)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    try:
        done = subprocess.run([setpriv, "--pdeathsig", "KILL", "--", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return setpriv if done.returncode == 0 else None


async def start(argv: list[str], cwd: Path, env: dict[str, str], pass_fds: tuple[int, ...], scoped: bool,
                setpriv: str | None, dies_with_parent: bool = False) -> Started:
    """Start ``argv`` in a new session, its output piped to us, made to die with us (through ``setpriv`` when
    there is one) unless it sees to that itself (``dies_with_parent``: bwrap's ``--die-with-parent``, one
    process less than setpriv's exec, a millisecond of CPU a job); ``scoped``, in a Landlock domain of its own.
    Returns once it runs (``pass_fds`` may then be closed)."""
    if dies_with_parent:
        preexec = None
    elif setpriv is not None:
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        preexec = None
    else:
        preexec = die_with_parent
    loop = asyncio.get_running_loop()
    started: asyncio.Future[subprocess.Popen] = loop.create_future()
    exited: asyncio.Future[int] = loop.create_future()

    def parent() -> None:
        try:
            if scoped:
                landlock.scope_self()
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds,
                                    preexec_fn=preexec)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
            _settle(loop, started, exception=exc)
            return
        _settle(loop, started, proc)
        _settle(loop, exited, proc.wait())

    threading.Thread(target=parent, name="command", daemon=True).start()
    proc = await started
    assert proc.stdout is not None  # asked for with PIPE
    output = asyncio.StreamReader(loop=loop)
    pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(output, loop=loop), proc.stdout)
    return Started(pid=proc.pid, output=output, exited=exited, pipe=pipe)


def _settle(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, result: Any = None,
            exception: BaseException | None = None) -> None:
    """Resolve ``fut`` from the starting thread, unless its waiter gave up (or the loop is gone)."""
    def settle() -> None:
        if fut.done():
            return
        if exception is not None:
            fut.set_exception(exception)
        else:
            fut.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: the runner is stopping
        pass

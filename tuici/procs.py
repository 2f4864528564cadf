"""Process helpers the supervisor and the runner share: prctl flags, process-group and descendant kills.

Cheap to import (psutil is only loaded when a kill needs it), so that neither process pays for the other's
modules at start-up.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import time
from typing import TYPE_CHECKING, NamedTuple

from .errors import ComponentError
from .lazy import LazyModule

if TYPE_CHECKING:
    import psutil
else:
    psutil = LazyModule("psutil")

SUPERVISED_BY = "TUICI_SUPERVISED_BY"  # the supervisor's pid, in the environment of each process it starts

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36

# Resolved once, here: a child between fork and exec must not load libraries (another thread may hold the lock).
libc: ctypes.CDLL | None
try:
    libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    libc = None
_prctl = getattr(libc, "prctl", None)  # not Linux: the flags below are best effort


def _set(option: int, value: int) -> None:
    if _prctl is not None:
        _prctl(option, value)


def die_with_parent() -> None:
    """In a child before exec: be killed if the process that started us dies (Linux)."""
    _set(_PR_SET_PDEATHSIG, signal.SIGKILL)


def die_with_supervisor() -> None:
    """In a process a supervisor started: be killed when it dies, as ``die_with_parent`` in a preexec_fn would.

    Asked here, after exec, so that the supervisor can spawn without a preexec_fn; if the supervisor died
    before we asked, we are no longer its child, and leave. The variable is dropped, so that what we start
    in turn (test commands) does not take the supervisor for its parent.
    """
    supervisor = os.environ.pop(SUPERVISED_BY, None)
    if supervisor is None:
        return
    die_with_parent()
    if os.getppid() != int(supervisor):
        raise ComponentError("the supervisor that started this process is gone")


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to us instead of init, so they can be found and killed."""
    _set(_PR_SET_CHILD_SUBREAPER, 1)


def hide_memory() -> None:
    """Processes of our own user (the code under test) may no longer read our memory or /proc/<pid>/environ,
    where a token given to us in TUICI_TOKEN stays readable after unsetenv (as ssh-agent does; Linux)."""
    _set(_PR_SET_DUMPABLE, 0)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def is_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(spare: frozenset[int]) -> list[int]:
    """The pids of every process below this one but the ``spare`` ones."""
    pids = _descendant_pids(spare)
    if pids is None:  # no /proc/*/task/*/children: psutil reads every process's parent instead
        try:
            return [proc.pid for proc in psutil.Process().children(recursive=True) if proc.pid not in spare]
        except psutil.Error:
            return []
    return pids


_CHILDREN_LISTED = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _descendant_pids(spare: frozenset[int]) -> list[int] | None:
    """Below this process, from the kernel's list of each thread's children: a few small reads, not the whole
    of /proc (whose reading costs milliseconds on a busy machine, after every job). None where Linux has no
    such list."""
    if not _CHILDREN_LISTED:
        return None
    found: list[int] = []
    pending = [os.getpid()]
    while pending:
        parent = pending.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:  # gone
            continue
        for thread in threads:
            try:
                with open(f"/proc/{parent}/task/{thread}/children", "rb") as fh:
                    children = [int(pid) for pid in fh.read().split()]
            except OSError:
                continue
            for child in children:
                if child not in spare:
                    found.append(child)
                    pending.append(child)
    return found


class _Stat(NamedTuple):
    name: str
    state: str  # "Z": a zombie
    parent: int
    started: int  # clock ticks after boot: with the pid, names the process (a pid is reused, this pair is not)


def _stat(pid: int) -> _Stat | None:
    """A process's name, state, parent and start from one read of /proc/<pid>/stat; None once it is reaped.
    (psutil reads the same file, two or three times over, for a kill of ours: it came to a few ms a job.)"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    name_end = data.rfind(b")")
    fields = data[name_end + 2:].split()
    return _Stat(data[data.find(b"(") + 1:name_end].decode(errors="replace"), fields[0].decode(), int(fields[1]),
                 int(fields[19]))


def _kill(pid: int, seen: _Stat, dying: list[int]) -> str | None:
    """SIGKILL the process ``seen`` at ``pid``, never another that took its pid since: through a pidfd (opened,
    then checked to be the same process) where Linux has them; that pidfd into ``dying``, to wait on. Its name as
    it was killed (a child forked by a shell takes its command's name at exec); None if it was gone."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone, or no pidfds (Linux < 5.3): the same check, just before the kill
        now = _stat(pid)
        if now is None or now.started != seen.started:
            return None
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            return None
        return now.name
    try:
        now = _stat(pid)
        if now is None or now.started != seen.started:
            os.close(fd)
            return None
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        os.close(fd)
        return None
    dying.append(fd)
    return now.name


def _await_ends(pidfds: list[int], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for the processes of ``pidfds`` to end (a pidfd reads ready then), and close
    them: a killed process takes a moment to die (the init of a PID namespace, its namespace's processes with it),
    and listing the descendants again meanwhile would find it alive, round after round."""
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    try:
        left = len(pidfds)
        while left and (remaining := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(remaining * 1000):
                poller.unregister(fd)
                left -= 1
    finally:
        for fd in pidfds:
            os.close(fd)


def _reap(pid: int, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for our killed child ``pid`` to end, and reap it."""
    deadline = time.monotonic() + timeout
    delay = 0.0001
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not ours, or reaped already
            return
        if done or time.monotonic() >= deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.04)


def kill_all_descendants(spare: frozenset[int] = frozenset()) -> list[str]:
    """SIGKILL every process below this one but the ``spare`` ones (helpers of our own), then reap the ones
    re-parented to us; the names of those killed.

    Round after round until none is left alive: a process that forks in a loop can add a child
    between one round's listing and its kill.
    """
    names: list[str] = []
    for _ in range(1000):
        alive = [(pid, seen) for pid in _descendants(spare)
                 if (seen := _stat(pid)) is not None and seen.state != "Z"]
        if not alive:
            break
        dying: list[int] = []
        for pid, seen in alive:
            name = _kill(pid, seen, dying)
            if name is not None and name not in names and name != "bwrap":
                names.append(name)
        _await_ends(dying, timeout=1.0)
    me = os.getpid()
    for pid in _descendants(spare):  # all dead now, so all re-parented to us
        seen = _stat(pid)
        if seen is not None and seen.parent == me:
            _reap(pid, timeout=1)
    return names
